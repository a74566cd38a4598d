//! The `flora` binary: parse the command line ([`cli`]), dispatch to one function per
//! subcommand ([`cmd`]), map errors to exit codes. Everything else is the `flora` library.

use std::process::ExitCode;

use clap::Parser;

mod cli;
mod cmd;

fn main() -> ExitCode {
    // Behave like other Unix tools when the reader of stdout goes away (`flora predict | head`).
    // SAFETY: setting a signal disposition at start-up, before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = cli::Cli::parse();
    match cmd::dispatch(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
