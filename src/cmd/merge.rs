//! `flora merge`: fold collected uploads into the dataset; `--undo BATCH`; `--status`.

use std::process::ExitCode;

use anyhow::Result;

use crate::cli::MergeArgs;
use flora::config::Settings;
use flora::feedback::merge::{self, Layout, MergeOptions};
use flora::track::select;

/// Runs a merge, an undo or a status report. Exits 1 when some file could not be moved.
pub fn run(settings: &Settings, args: &MergeArgs) -> Result<ExitCode> {
    let layout = Layout::new(settings, args.from.as_deref())?;
    if args.status {
        return status(&layout);
    }
    if let Some(batch) = &args.undo {
        let report = merge::undo(&layout, batch, args.dry_run)?;
        print_notes(&report.notes);
        if args.dry_run {
            for r in &report.restored {
                println!("restore  {}  ->  {}", r.destination, r.source);
            }
            println!(
                "would put back {} file(s) of batch {batch} (dry run: nothing changed)",
                report.restored.len()
            );
        } else {
            println!(
                "put back {} file(s) of batch {batch} where they came from",
                report.restored.len()
            );
        }
        return Ok(exit(&report.notes));
    }
    let chosen = select::choose_named_or_live(settings, &args.model.choice())?;
    let sorter = match &chosen {
        Some(c) => {
            eprintln!("model: {}", c.describe());
            Some(merge::Sorter::load(settings, c)?)
        }
        None => {
            eprintln!(
                "no model (no live slot, no --model/--run/--slot): new images go to the inbox unsorted"
            );
            None
        }
    };
    let opts = MergeOptions {
        accept_above: args.accept_above,
        dry_run: args.dry_run,
        limits: settings.decode_limits(),
    };
    let report = merge::merge(&layout, sorter.as_ref(), &opts)?;
    print_notes(&report.notes);
    if args.dry_run {
        for r in &report.rows {
            let conf = r
                .confidence
                .map(|c| format!(" {} {:.1}%", r.predicted_class, 100.0 * c))
                .unwrap_or_default();
            let why = if r.reason.is_empty() {
                String::new()
            } else {
                format!("  ({})", r.reason)
            };
            println!(
                "{:<9} {}  ->  {}{conf}{why}",
                format!("{:?}", r.action).to_lowercase(),
                r.source,
                r.destination
            );
        }
    }
    if report.lone_sidecars > 0 {
        eprintln!(
            "note: left {} sidecar(s) without an image in place (uploads still being written?)",
            report.lone_sidecars
        );
    }
    println!("{}", report.summary());
    if args.dry_run {
        println!("dry run: nothing changed");
    } else if !report.rows.is_empty() {
        println!(
            "batch {}: manifest {}; undo with `flora merge --undo {}`",
            report.batch,
            report.manifest.display(),
            report.batch
        );
    }
    Ok(exit(&report.notes))
}

/// Notes on stderr; a refused journal or manifest entry as an error.
fn print_notes(notes: &[String]) {
    for n in notes {
        let tag = if n.starts_with("refused ") {
            "error"
        } else {
            "note"
        };
        eprintln!("{tag}: {n}");
    }
}

fn exit(notes: &[String]) -> ExitCode {
    if notes.iter().any(|n| !n.starts_with("finished ")) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn status(layout: &Layout) -> Result<ExitCode> {
    let st = merge::status(layout)?;
    println!(
        "{}: {} image(s) waiting to be sorted",
        layout.inbox.display(),
        st.waiting
    );
    if st.waiting > 0 {
        println!("by suggested class:");
        for (class, n) in &st.by_class {
            let name = if class.is_empty() {
                "(not pre-sorted)"
            } else {
                class
            };
            println!("  {name:<24} {n:>6}");
        }
        println!("by date collected:");
        for (date, n) in &st.by_date {
            println!("  {date:<24} {n:>6}");
        }
    }
    println!(
        "{}: {} upload(s) not merged yet",
        layout.collected.display(),
        st.not_merged
    );
    if let Some((b, n)) = st.batches.last() {
        println!(
            "{} batch(es) in the manifest; last: {b} ({n} file(s))",
            st.batches.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}
