//! One function per subcommand: turn parsed arguments into library calls and print the result.
//! Each returns the process exit code.

pub mod cache;
pub mod completions;
pub mod cv;
pub mod eval;
pub mod export;
pub mod health;
pub mod init;
pub mod label;
pub mod man;
pub mod merge;
pub mod predict;
pub mod promote;
pub mod runs;
pub mod serve;
pub mod train;

use std::process::ExitCode;

use anyhow::Result;

use crate::cli::{Cli, Command};
use flora::config::Settings;
use flora::util::device::DeviceChoice;

/// Exit code of a run stopped by Ctrl-C.
pub const EXIT_INTERRUPTED: u8 = 130;

/// Picks the process's device (see [`flora::util::device::select`]); prints it when `announce`.
pub fn select_device(choice: DeviceChoice, announce: bool) -> Result<()> {
    let selected = flora::util::device::select(choice)?;
    if announce {
        eprintln!("{}", selected.describe());
    }
    Ok(())
}

/// The device of eval, predict and serve: the CPU (the fused path) unless `--device` asks for
/// another, which is then printed.
pub fn select_inference_device(flag: Option<DeviceChoice>) -> Result<()> {
    select_device(flag.unwrap_or(DeviceChoice::Cpu), flag.is_some())
}

/// Runs the parsed command line.
pub fn dispatch(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Init(args) => init::run(&args),
        Command::Train(args) => train::run(&Settings::load(cli.config.as_deref())?, &args),
        Command::Runs(args) => runs::run(&Settings::load(cli.config.as_deref())?, &args),
        Command::Eval(args) => eval::run(&Settings::load(cli.config.as_deref())?, &args),
        Command::Predict(args) => predict::run(&Settings::load(cli.config.as_deref())?, &args),
        Command::Serve(args) => serve::run(&Settings::load(cli.config.as_deref())?, &args),
        Command::Promote(args) => promote::run(&Settings::load(cli.config.as_deref())?, &args),
        Command::Status(args) => promote::status(&Settings::load(cli.config.as_deref())?, &args),
        Command::Merge(args) => merge::run(&Settings::load(cli.config.as_deref())?, &args),
        Command::Label(args) => label::run(&Settings::load(cli.config.as_deref())?, &args),
        Command::Cv(args) => cv::run(&Settings::load(cli.config.as_deref())?, &args),
        Command::Health(args) => health::run(&Settings::load(cli.config.as_deref())?, &args),
        Command::Cache(args) => cache::run(&Settings::load(cli.config.as_deref())?, &args),
        Command::Export(args) => export::run(&Settings::load(cli.config.as_deref())?, &args),
        Command::Completions(args) => completions::run(&args),
        Command::Man(args) => man::run(&args),
    }
}
