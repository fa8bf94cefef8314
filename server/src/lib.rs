//! # allot-server
//!
//! Serves the allot engine: native HTTP and gRPC allocation, hot-swapped config, trace
//! stamping. One [`service::Service`] holds the logic; transports only map requests,
//! responses and errors. See ARCHITECTURE.md for the request and reload paths.

pub mod access;
pub mod admin;
pub mod app;
pub mod error;
pub mod flagd;
pub mod grpc;
pub mod guard;
pub mod http;
pub mod listen;
pub mod log;
pub mod metrics;
pub mod ofrep;
pub mod protobuf;
pub mod render;
pub mod service;
pub mod settings;
pub mod source;
pub mod state;
pub mod trace;
pub mod track;
pub mod upstream;
