//! `flora label`: the browser page to sort the inbox (or a queue file).

use std::process::ExitCode;

use anyhow::Result;

use crate::cli::LabelArgs;
use flora::config::Settings;
use flora::feedback::label::{self, Options};

/// Serves the page until Ctrl-C, then says what the session did.
pub fn run(settings: &Settings, args: &LabelArgs) -> Result<ExitCode> {
    let user = args
        .user
        .clone()
        .or_else(|| std::env::var("USER").ok())
        .filter(|u| !u.trim().is_empty())
        .unwrap_or_else(|| "unknown".into());
    let summary = label::run(
        settings,
        Options {
            host: args.host.clone(),
            port: args.port,
            model: args.model.choice(),
            queue: args.queue.clone(),
            user,
        },
    )?;
    println!(
        "sorted {} of {} image(s) in batch {}",
        summary.done, summary.total, summary.batch
    );
    println!("manifest: {}", summary.manifest.display());
    if summary.done > 0 {
        println!(
            "undo the whole session with: flora merge --undo {}",
            summary.batch
        );
    }
    Ok(ExitCode::SUCCESS)
}
