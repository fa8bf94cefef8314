//! HTTP transport (axum) on the evaluation port: `/v1/allocate`, `/v1/config`.
