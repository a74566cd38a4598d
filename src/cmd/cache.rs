//! `flora cache`: where the pixel cache is, what it holds per image size, its bound; `flora
//! cache clear` empties it. Also the `--no-cache` flags' settings.

use std::process::ExitCode;

use anyhow::Result;
use serde_json::json;

use super::runs::table::{self, left, right};
use crate::cli::{CacheArgs, CacheCommand, CacheShowArgs};
use flora::config::Settings;
use flora::config::settings::PIXEL_CACHE_ENV;
use flora::data::imaging::PIPELINE_VERSION;
use flora::data::pixel_store::human_bytes;

/// `settings` with the pixel cache turned off when `no_cache` (a `--no-cache` flag) is set.
pub fn unless_off(settings: &Settings, no_cache: bool) -> Settings {
    let mut s = settings.clone();
    if no_cache {
        s.config.cache.enabled = false;
    }
    s
}

/// Runs `flora cache [show|clear]`.
pub fn run(settings: &Settings, args: &CacheArgs) -> Result<ExitCode> {
    match &args.command {
        None => show(settings, &args.show),
        Some(CacheCommand::Show(a)) => show(settings, a),
        Some(CacheCommand::Clear(a)) => clear(settings, a),
    }
}

/// Whether runs use the cache, and if not, what turned it off.
fn state(settings: &Settings) -> String {
    match settings.pixel_store() {
        Ok(Some(_)) => "on".into(),
        Ok(None) if !settings.config.cache.enabled => "off (cache.enabled = false)".into(),
        Ok(None) => format!("off ({PIXEL_CACHE_ENV})"),
        Err(e) => format!("{e:#}"),
    }
}

fn show(settings: &Settings, args: &CacheShowArgs) -> Result<ExitCode> {
    let store = settings.pixel_store_anyway();
    let u = store.usage()?;
    let (total, max) = (u.total_bytes(), store.max_bytes());
    if args.json {
        let groups: Vec<_> = u
            .groups
            .iter()
            .map(|g| {
                json!({
                    "pipeline": g.pipeline, "size": g.size, "entries": g.entries,
                    "bytes": g.bytes, "current": g.pipeline == PIPELINE_VERSION,
                })
            })
            .collect();
        let v = json!({
            "dir": store.dir(), "state": state(settings), "pipeline_version": PIPELINE_VERSION,
            "max_bytes": max, "entries": u.entries(), "total_bytes": total,
            "memo_bytes": u.memo_bytes, "temp_files": u.temp_files, "groups": groups,
            "foreign": u.foreign, "foreign_count": u.foreign_count,
        });
        println!("{v}");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "pixel cache  {} ({})",
        store.dir().display(),
        state(settings)
    );
    println!(
        "bound        {} (cache.max_size_mb = {}), {:.1}% used",
        human_bytes(max),
        settings.config.cache.max_size_mb,
        100.0 * total as f64 / max as f64
    );
    if u.groups.is_empty() && total == 0 {
        println!("empty");
        return Ok(ExitCode::SUCCESS);
    }
    println!();
    let cols = [
        left("pipeline"),
        right("size"),
        right("entries"),
        right("on disk"),
        right("per image"),
        left(""),
    ];
    let mut rows: Vec<Vec<String>> = u
        .groups
        .iter()
        .map(|g| {
            vec![
                format!("v{}", g.pipeline),
                format!("{} px", g.size),
                g.entries.to_string(),
                human_bytes(g.bytes),
                human_bytes(g.bytes / g.entries.max(1)),
                if g.pipeline == PIPELINE_VERSION {
                    String::new()
                } else {
                    "older flora: never used, evicted first".into()
                },
            ]
        })
        .collect();
    rows.push(vec![
        "file memo".into(),
        String::new(),
        String::new(),
        human_bytes(u.memo_bytes),
    ]);
    if u.temp_files > 0 {
        rows.push(vec![
            "temp files".into(),
            String::new(),
            u.temp_files.to_string(),
            human_bytes(u.temp_bytes),
        ]);
    }
    rows.push(vec![
        "total".into(),
        String::new(),
        u.entries().to_string(),
        human_bytes(total),
    ]);
    print!(
        "{}",
        table::render(&cols, &rows, None, 0, table::screen_width())
    );
    if u.foreign_count > 0 {
        println!("{}", foreign_note(&u.foreign, u.foreign_count));
    }
    Ok(ExitCode::SUCCESS)
}

fn foreign_note(first: &[std::path::PathBuf], count: u64) -> String {
    let names: Vec<String> = first.iter().map(|p| p.display().to_string()).collect();
    format!(
        "note: {count} path(s) in the cache folder are not the cache's and are left alone: {}{}",
        names.join(", "),
        if count > first.len() as u64 {
            ", ..."
        } else {
            ""
        }
    )
}

fn clear(settings: &Settings, args: &CacheShowArgs) -> Result<ExitCode> {
    let store = settings.pixel_store_anyway();
    let c = store.clear()?;
    if args.json {
        let v = json!({
            "dir": store.dir(), "entries": c.entries, "bytes": c.bytes,
            "temp_files": c.temp_files, "memo": c.memo, "left": c.left,
            "left_count": c.left_count,
        });
        println!("{v}");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "removed {} cached images{} ({}) from {}",
        c.entries,
        if c.memo { " and the file memo" } else { "" },
        human_bytes(c.bytes),
        store.dir().display()
    );
    if c.left_count > 0 {
        println!("{}", foreign_note(&c.left, c.left_count));
    }
    Ok(ExitCode::SUCCESS)
}
