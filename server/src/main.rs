//! `allot-server` binary (being assembled: see lib).
fn main() {}
