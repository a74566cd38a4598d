//! `flora serve`: the HTTP API (see [`flora::serving::serve`]).

use std::process::ExitCode;

use anyhow::Result;

use crate::cli::ServeArgs;
use flora::config::Settings;
use flora::serving::serve::{self, Options};

/// Serves until SIGINT/SIGTERM.
pub fn run(settings: &Settings, args: &ServeArgs) -> Result<ExitCode> {
    super::select_inference_device(args.device)?;
    let cfg = &settings.config.serve;
    serve::run(
        settings,
        Options {
            host: args.host.clone().unwrap_or_else(|| cfg.host.clone()),
            port: args.port.unwrap_or(cfg.port),
            collect: cfg.collect && !args.no_collect,
        },
    )?;
    Ok(ExitCode::SUCCESS)
}
