//! The wire contract of allot: protobuf messages and gRPC service stubs, generated at build
//! time from the `.proto` files in this crate's `proto/` directory (no system `protoc` needed).
//!
//! - [`allot::v1`]: allot's native API, the `allot.v1.Allocator` service (`Allocate`,
//!   `ResolveFlags`, `WatchConfig`).
//! - [`flagd::evaluation::v1`] and [`flagd::evaluation::v2`]: the OpenFeature flagd evaluation
//!   API, so that flagd providers in RPC mode can talk to allot.
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptors of all of the above, for gRPC reflection.
//! - [`convert`]: conversions between `google.protobuf.Struct`/`Value` and `serde_json`.
//!
//! Messages are always available. The tonic service stubs are behind features: `server`
//! generates the `*_server` modules, `client` the `*_client` modules.

pub mod convert;

/// The encoded `google.protobuf.FileDescriptorSet` of every `.proto` file in this crate and
/// its imports, with source info (comments). Pass it to tonic-reflection's
/// `register_encoded_file_descriptor_set`.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/file_descriptor_set.bin"));

/// allot's own protobuf packages.
pub mod allot {
    /// Package `allot.v1`: the native allocation API.
    pub mod v1 {
        #![allow(missing_docs, clippy::all, clippy::pedantic, rustdoc::all)]
        include!(concat!(env!("OUT_DIR"), "/allot.v1.rs"));
    }
}

/// The OpenFeature flagd protobuf packages.
pub mod flagd {
    /// The flagd evaluation API.
    pub mod evaluation {
        /// Package `flagd.evaluation.v1` (deprecated upstream in favour of v2).
        pub mod v1 {
            #![allow(missing_docs, clippy::all, clippy::pedantic, rustdoc::all)]
            include!(concat!(env!("OUT_DIR"), "/flagd.evaluation.v1.rs"));
        }

        /// Package `flagd.evaluation.v2`: resolved values and variants are optional.
        pub mod v2 {
            #![allow(missing_docs, clippy::all, clippy::pedantic, rustdoc::all)]
            include!(concat!(env!("OUT_DIR"), "/flagd.evaluation.v2.rs"));
        }
    }
}
