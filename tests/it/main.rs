//! flora's integration tests: one test binary (`cargo test --test it`), one module per area,
//! each running the real `flora` binary (or the library) on the real images under
//! `tests/data/`. Helpers and the fixtures made once per process live in [`support`].
//!
//! All modules run in one process, in parallel threads: a test must not change what is
//! process-wide (environment, current folder, the SIMD kernels' cap, the global thread pool);
//! it runs a child process for that (see `support::kernels`).

mod support;

mod architecture;
mod browser;
mod class_weights;
mod cli_extras;
mod container;
mod cv;
mod deploy;
mod eval_predict;
mod explain;
mod export;
mod export_tract;
mod fused_mobilenet_train;
mod fused_train;
mod gpu;
mod indexed;
mod kernel_builds;
mod label_hardening;
mod merge;
mod mlflow;
mod mlflow_push;
mod mobilenet;
mod monitoring;
mod openapi;
mod orientation;
mod pixel_cache;
mod promote;
mod replicas;
mod report;
mod resume;
mod retrain;
mod runs;
mod serve;
mod serve_hardening;
mod serve_limits;
mod split;
mod sweep;
mod train;
mod unknown;
mod weights_download;
mod whole_step;
