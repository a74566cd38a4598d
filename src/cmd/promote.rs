//! `flora promote` (fill a slot, switch live, roll back) and `flora status`.

use std::process::ExitCode;

use anyhow::{Result, bail};

use crate::cli::{PromoteArgs, StatusArgs};
use flora::config::Settings;
use flora::serving::promote::{self, PromoteRequest};
use flora::track::slots::{Registry, Slot};

/// `flora promote RUN [--to SLOT] [--live]`, `flora promote --live SLOT`, `flora promote --rollback`.
pub fn run(settings: &Settings, args: &PromoteArgs) -> Result<ExitCode> {
    let registry = Registry::new(settings.models_dir());
    if args.rollback {
        if args.run.is_some() || args.live.is_some() {
            bail!("--rollback takes no run and no --live");
        }
        let to = registry.previous_live()?;
        registry.switch_live(to, "rollback")?;
        println!("rolled back: {to} is live again");
        return Ok(ExitCode::SUCCESS);
    }
    let Some(run) = &args.run else {
        let Some(Some(slot)) = args.live.map(|l| l.map(Slot::from)) else {
            bail!(
                "name a run to promote (`flora promote RUN`), or use --live blue|green or --rollback"
            );
        };
        registry.switch_live(slot, "live")?;
        println!("{slot} is live");
        return Ok(ExitCode::SUCCESS);
    };
    if let Some(Some(_)) = args.live {
        bail!("with a run, --live takes no value: use --to SLOT --live");
    }
    let p = promote::promote(
        &super::cache::unless_off(settings, args.no_cache),
        &PromoteRequest {
            run: run.clone(),
            to: args.to.map(Slot::from),
            data: args.data.clone(),
            force: args.force,
            live: args.live.is_some(),
        },
    )?;
    println!(
        "promoted run {} ({}) to {} (accuracy {:.2}%){}",
        p.info.run_name,
        flora::track::store::short_id(&p.info.run_id),
        p.slot,
        100.0 * p.info.accuracy.unwrap_or(0.0),
        if p.made_live { "; it is live" } else { "" }
    );
    if let Some((slot, acc)) = p.compared_with {
        println!(
            "live model {slot} scored {:.2}% on the same data",
            100.0 * acc
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `flora status [--json]`: both slots and which one is live.
pub fn status(settings: &Settings, args: &StatusArgs) -> Result<ExitCode> {
    let rows = promote::status(&settings.models_dir())?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&serde_json::json!({ "slots": rows }))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<6} {:<5} {:<28} {:<10} {:>8}  {:<27} data",
        "slot", "live", "run", "id", "accuracy", "promoted_at"
    );
    for r in rows {
        let dash = || "-".to_string();
        println!(
            "{:<6} {:<5} {:<28} {:<10} {:>8}  {:<27} {}",
            r.slot.as_str(),
            if r.live { "*" } else { "" },
            r.run_name
                .unwrap_or_else(|| if r.filled { dash() } else { "(empty)".into() }),
            r.run_id
                .map(|s| flora::track::store::short_id(&s).to_string())
                .unwrap_or_else(dash),
            r.accuracy
                .map(|a| format!("{:.2}%", 100.0 * a))
                .unwrap_or_else(dash),
            r.promoted_at.unwrap_or_else(dash),
            r.data_fingerprint.unwrap_or_else(dash)
        );
    }
    Ok(ExitCode::SUCCESS)
}
