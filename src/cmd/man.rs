//! `flora man`: one roff man page per command (clap_mangen), flora.1, flora-train.1,
//! flora-runs-show.1 ..., each written crash-safe.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::CommandFactory;

use crate::cli::{Cli, ManArgs};
use flora::util::fsutil::write_atomic;

/// Writes the pages into `args.out` and lists them.
pub fn run(args: &ManArgs) -> Result<ExitCode> {
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create the man page folder {}", args.out.display()))?;
    // The pages document the binary, not this machine: no kernel build in their version.
    let mut cmd = Cli::command()
        .long_version(None::<&str>)
        .disable_help_subcommand(true);
    cmd.build();
    let mut written = 0;
    write_pages(cmd, &args.out, &mut written)?;
    println!("{written} man pages in {}", args.out.display());
    Ok(ExitCode::SUCCESS)
}

/// Writes `cmd`'s page, then its subcommands' (hidden ones left out).
fn write_pages(cmd: clap::Command, out: &Path, written: &mut usize) -> Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_pages(sub.clone(), out, written)?;
    }
    let man = clap_mangen::Man::new(cmd);
    let mut page = Vec::new();
    man.render(&mut page).context("cannot render a man page")?;
    let path = out.join(man.get_filename());
    write_atomic(&path, &page).with_context(|| format!("cannot write {}", path.display()))?;
    *written += 1;
    Ok(())
}
