//! `flora completions SHELL`: the shell's completion script on stdout (clap_complete).

use std::process::ExitCode;

use anyhow::Result;
use clap::CommandFactory;

use crate::cli::{Cli, CompletionsArgs};

/// Prints the completion script for `args.shell`.
pub fn run(args: &CompletionsArgs) -> Result<ExitCode> {
    let mut cmd = Cli::command();
    clap_complete::generate(args.shell, &mut cmd, "flora", &mut std::io::stdout().lock());
    Ok(ExitCode::SUCCESS)
}
