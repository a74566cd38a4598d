//! `flora init [DIR]`: a commented default flora.toml and the project folders.

use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::cli::InitArgs;
use flora::config::{DEFAULT_CONFIG, DEFAULT_TOML};

/// Creates `DIR/flora.toml` (never overwriting one) and `dataset/`, `runs/`, `models/`,
/// `collected_data/`.
pub fn run(args: &InitArgs) -> Result<ExitCode> {
    let dir = &args.dir;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let config = dir.join(DEFAULT_CONFIG);
    if config.exists() {
        eprintln!("{} exists: left as it is", config.display());
    } else {
        flora::util::fsutil::write_atomic(&config, DEFAULT_TOML.as_bytes())?;
        println!("wrote {}", config.display());
    }
    for sub in ["dataset", "runs", "models", "collected_data"] {
        let p = dir.join(sub);
        std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
    }
    println!(
        "created dataset/, runs/, models/, collected_data/ in {}",
        dir.display()
    );
    println!("next: put images in dataset/<class>/ and run `flora train`");
    Ok(ExitCode::SUCCESS)
}
