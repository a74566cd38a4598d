//! What the test modules share. Every fixture here that is costly to make (the trained serve
//! bundles, the browser session, eval's HTML report) is a process-wide `OnceLock`, made by the
//! first test that needs it and shared by every module of the one test binary.

pub mod browser;
pub mod common;
pub mod compose;
pub mod http;
pub mod kernels;
pub mod label;
pub mod serve;
