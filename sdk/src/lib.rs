//! # allot: deterministic experiment allocation and flag resolution
//!
//! The engine behind the allot server and SDK: a pure function of (config, context).
//! A unit (a member id, a device id) is hashed with a layer's salt into a bucket; the experiment
//! owning that bucket hashes it again with its own salt into a weighted cell; each cell selects
//! flag variants. Every replica, device and language gets the same answer with no lookup table.
//!
//! ```
//! let snapshot = allot::compile_str(r#"
//! layers: [{ id: home }]
//! experiments:
//!   - id: prefetch-test
//!     layer: home
//!     ranges: ["0..10000"]
//!     cells:
//!       - { id: control,   flags: { prefetch: "off" } }
//!       - { id: treatment, flags: { prefetch: "on" } }
//! flags:
//!   - { key: prefetch, type: bool, variants: { "on": true, "off": false }, default: "off" }
//! "#, 1).unwrap();
//! let ctx = allot::Context::with_targeting_key("member-1");
//! let r = snapshot.resolve("prefetch", &ctx).unwrap();
//! assert_eq!(r.reason, allot::Reason::Split);
//! assert_eq!(r.assignment.unwrap().experiment, "prefetch-test");
//! ```
//!
//! The algorithm is specified byte for byte in `docs/spec.md` and pinned by
//! `testdata/vectors.json`. The default feature set does no I/O, reads no clock and uses no RNG.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod bucket;
#[cfg(feature = "client")]
pub mod client;
mod compile;
mod condition;
pub mod config;
mod context;
mod error;
pub mod id;
mod key_index;
#[cfg(feature = "openfeature")]
pub mod openfeature;
#[cfg(feature = "otel")]
pub mod propagation;
mod snapshot;
pub mod stamp;
#[cfg(feature = "tower")]
pub mod tower;

#[cfg(feature = "client")]
pub use client::Client;
pub use compile::{MAX_BUCKETS, compile, compile_str};
pub use condition::MAX_DEPTH;
pub use config::{Config, FlagType};
pub use context::{Context, TARGETING_KEY, UnitError};
pub use error::{ConfigError, ConfigErrors, ErrorKind};
pub use snapshot::{
    Allocation, Assignment, ErrorCode, FlagId, FlagNotFound, Reason, Resolution, Snapshot,
    StaleFlagId,
};
