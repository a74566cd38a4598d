//! Planning a merge: find the finished uploads, hash and decode them, pre-sort them with the
//! model, and pick a destination for each that nothing else holds. Reads only; moves nothing.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rayon::prelude::*;
use walkdir::WalkDir;

use super::journal::Entry;
use super::layout::Layout;
use super::manifest::{Action, Row};
use crate::config::Settings;
use crate::data::imaging::{self, DecodeLimits};
use crate::model::bundle::ModelBundle;
use crate::serving::collect::Sidecar;
use crate::track::select::Chosen;
use crate::util::fingerprint::{hex, sha256};

/// The model merge pre-sorts with, and where it came from (for the manifest).
pub struct Sorter {
    pub bundle: ModelBundle,
    pub slot: String,
    pub run_id: String,
    /// Below these an image stays in the inbox's own folder (see [`crate::model::unknown`]).
    pub thresholds: crate::model::unknown::Thresholds,
}

impl Sorter {
    /// Loads a chosen model, with the thresholds it answers with (the config's `[thresholds]`
    /// when set, else the bundle's).
    pub fn load(settings: &Settings, chosen: &Chosen) -> Result<Sorter> {
        let bundle = chosen.load()?;
        let thresholds = bundle.meta.thresholds_with(settings.thresholds());
        let run_id = bundle
            .meta
            .run_id
            .clone()
            .or_else(|| chosen.run().map(|r| r.run_id.clone()))
            .unwrap_or_default();
        Ok(Sorter {
            bundle,
            slot: chosen.slot().map(|s| s.to_string()).unwrap_or_default(),
            run_id,
            thresholds,
        })
    }
}

/// What a scan of collected_data found.
pub struct Scan {
    /// Finished image candidates (every non-hidden, non-JSON file), sorted.
    pub images: Vec<PathBuf>,
    /// JSON files that belong to no image (an upload serve is still writing): left alone.
    pub lone_sidecars: usize,
}

/// Lists collected_data: hidden names (`.tmp-*` files being written) and `_` folders
/// (`_rejected`, `_duplicates`, `_merged`) are skipped, and so are symlinks.
pub fn scan(collected: &Path) -> Result<Scan> {
    let mut images = Vec::new();
    let mut jsons = HashSet::new();
    if !collected.is_dir() {
        return Ok(Scan {
            images,
            lone_sidecars: 0,
        });
    }
    let walker = WalkDir::new(collected)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| {
            let name = e.file_name().to_string_lossy();
            e.depth() == 0
                || !(name.starts_with('.') || (e.file_type().is_dir() && name.starts_with('_')))
        });
    for e in walker {
        let e = e.with_context(|| format!("listing {}", collected.display()))?;
        if !e.file_type().is_file() {
            continue;
        }
        let p = e.into_path();
        if p.extension()
            .is_some_and(|x| x.eq_ignore_ascii_case("json"))
        {
            jsons.insert(p);
        } else {
            images.push(p);
        }
    }
    let taken = images
        .iter()
        .filter(|p| jsons.contains(&p.with_extension("json")))
        .count();
    Ok(Scan {
        images,
        lone_sidecars: jsons.len() - taken,
    })
}

/// One collected image, read and judged.
struct Looked {
    sha: String,
    /// Why it is not a usable image.
    bad: Option<String>,
    /// Model input pixels, when a model will look at it.
    pixels: Option<Vec<u8>>,
    sidecar: Option<(Option<Sidecar>, String)>,
}

fn look(path: &Path, size: Option<u32>, limits: DecodeLimits) -> Result<Looked> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let sha = hex(&sha256(&bytes));
    // Decoded upright, at a reduced scale when a model will look at it (else only as small
    // as the check that it is a whole image needs).
    let (bad, pixels) = match imaging::decode_rgb(&bytes, size.unwrap_or(8), limits) {
        Ok(img) => (None, size.map(|s| imaging::square(&img, s).into_raw())),
        Err(e) => (Some(format!("{e:#}")), None),
    };
    let side = path.with_extension("json");
    let sidecar = match std::fs::read(&side) {
        Ok(b) => Some((serde_json::from_slice(&b).ok(), hex(&sha256(&b)))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("reading {}", side.display())),
    };
    Ok(Looked {
        sha,
        bad,
        pixels,
        sidecar,
    })
}

/// A class name safe to use as one folder name.
fn folder(class: &str) -> String {
    let s: String = class
        .chars()
        .map(|c| {
            if c == '/' || c == '\\' || c == '\0' {
                '_'
            } else {
                c
            }
        })
        .collect();
    if s.is_empty() || s == "." || s == ".." {
        "_unnamed".into()
    } else {
        s
    }
}

/// The collection date of an upload: its dated folder's name, else its sidecar's time, else
/// the file's modification date.
fn collected_date(layout: &Layout, path: &Path, sidecar: Option<&Sidecar>) -> String {
    let is_date = |s: &str| s.parse::<jiff::civil::Date>().is_ok() && s.len() == 10;
    if let Some(d) = path
        .parent()
        .filter(|p| *p != layout.collected)
        .and_then(|p| p.file_name())
        .map(|s| s.to_string_lossy().into_owned())
        .filter(|s| is_date(s))
    {
        return d;
    }
    if let Some(t) = sidecar.map(|s| s.time.get(..10).unwrap_or_default().to_string())
        && is_date(&t)
    {
        return t;
    }
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| jiff::Timestamp::try_from(t).ok())
        .map(|t| t.strftime("%Y-%m-%d").to_string())
        .unwrap_or_default()
}

/// Plans batch `batch`: one entry per image of `images`, in order. `known` maps the content
/// hashes already in the dataset to where they are ([`super::hashes::dataset_hashes`]).
pub fn plan(
    layout: &Layout,
    batch: &str,
    images: &[PathBuf],
    sorter: Option<&Sorter>,
    accept_above: Option<f32>,
    limits: DecodeLimits,
    mut known: HashMap<String, String>,
) -> Result<Vec<Entry>> {
    let mut reserved = HashSet::new();
    let size = sorter.map(|s| s.bundle.meta.image_size);
    let now = jiff::Timestamp::now().to_string();
    let accept_root = layout.accept_root();
    let mut entries = Vec::with_capacity(images.len());
    let bar = crate::util::progress::count_bar(images.len() as u64, "checking");
    for chunk in images.chunks(crate::model::infer::BATCH) {
        let looked: Vec<Looked> = chunk
            .par_iter()
            .map(|p| look(p, size, limits))
            .collect::<Result<_>>()?;
        let probs = match sorter {
            Some(s) => {
                let px: Vec<&[u8]> = looked.iter().filter_map(|l| l.pixels.as_deref()).collect();
                s.bundle.predict_pixels(&px)
            }
            None => Vec::new(),
        };
        let mut probs = probs.into_iter();
        for (path, l) in chunk.iter().zip(looked) {
            let side_meta = l.sidecar.as_ref().and_then(|(m, _)| m.as_ref());
            let in_collected = path.strip_prefix(&layout.collected).unwrap_or(path);
            let name = path.file_name().unwrap_or_default();
            let mut row = Row {
                batch: batch.to_string(),
                action: Action::Inbox,
                source: layout.rel(path),
                destination: String::new(),
                sha256: l.sha.clone(),
                collected_date: collected_date(layout, path, side_meta),
                predicted_class: String::new(),
                confidence: None,
                slot: String::new(),
                run_id: String::new(),
                predicted_by: String::new(),
                serve_class: String::new(),
                serve_confidence: None,
                serve_slot: String::new(),
                serve_run_id: String::new(),
                sidecar: String::new(),
                reason: String::new(),
                merged_at: now.clone(),
                labelled_class: String::new(),
                labelled_by: String::new(),
            };
            if let Some(m) = side_meta {
                row.predicted_class = m.predicted_class.clone();
                row.confidence = Some(m.confidence);
                row.slot = m.slot.clone().unwrap_or_default();
                row.run_id = m.run_id.clone().unwrap_or_default();
                row.predicted_by = "serve".into();
                row.serve_class = m.predicted_class.clone();
                row.serve_confidence = Some(m.confidence);
                row.serve_slot = row.slot.clone();
                row.serve_run_id = row.run_id.clone();
            }
            let dest = if let Some(first) = known.get(&l.sha) {
                row.action = Action::Duplicate;
                row.reason = format!("same content as {first}");
                if l.pixels.is_some() {
                    probs.next();
                }
                layout.collected.join("_duplicates").join(in_collected)
            } else if let Some(why) = &l.bad {
                row.action = Action::Rejected;
                row.reason = why.clone();
                layout.collected.join("_rejected").join(in_collected)
            } else {
                known.insert(l.sha.clone(), format!("{} (this batch)", row.source));
                match sorter {
                    None => layout.inbox.join(name),
                    Some(s) => {
                        let p = probs.next().expect("one prediction per decoded image");
                        let top = s.bundle.top_k(&p, 1).remove(0);
                        row.predicted_class = top.class.clone();
                        row.confidence = Some(top.confidence);
                        row.slot = s.slot.clone();
                        row.run_id = s.run_id.clone();
                        row.predicted_by = "merge".into();
                        if s.thresholds.is_unknown(&top) {
                            row.reason = format!(
                                "unknown: confidence below {}",
                                s.thresholds.for_class(&top.class).unwrap_or_default()
                            );
                            layout.inbox.join(name)
                        } else if accept_above.is_some_and(|t| top.confidence >= t) {
                            row.action = Action::Accepted;
                            accept_root.join(folder(&top.class)).join(name)
                        } else {
                            layout.inbox.join(folder(&top.class)).join(name)
                        }
                    }
                }
            };
            let dest = super::moves::free_name(&dest, &mut reserved);
            if l.sidecar.is_some() {
                let side_dest = match row.action {
                    Action::Duplicate | Action::Rejected => dest.with_extension("json"),
                    _ => layout
                        .collected
                        .join("_merged")
                        .join(in_collected)
                        .with_extension("json"),
                };
                row.sidecar = layout.rel(&super::moves::free_name(&side_dest, &mut reserved));
            }
            row.destination = layout.rel(&dest);
            entries.push(Entry {
                row,
                sidecar_sha256: l.sidecar.map(|(_, s)| s),
            });
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok(entries)
}
