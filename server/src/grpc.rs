//! gRPC transport (tonic): `allot.v1.Allocator`, health, reflection. Maps messages to [`crate::service::Service`] calls.
