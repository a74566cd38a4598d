//! One `flora label` session: the queue, the decisions made (one merge batch), and undoing
//! them one step at a time. Every move goes through merge's journalled moves
//! ([`crate::feedback::merge::relabel`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;

use anyhow::{Result, bail};
use serde::Serialize;

use super::queue::Item;
use crate::data::dataset::check_class_name;
use crate::feedback::merge::relabel::{self, Move};
use crate::feedback::merge::{Action, Layout, Row};

/// The folder rejected images go to: `dataset/_rejected/` (a `_` folder is never a class).
pub const REJECTED: &str = "_rejected";

/// What a person decided about some images.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Into this class's folder (a relabel for queue-file images).
    Class(String),
    /// Into `dataset/_rejected/`.
    Reject,
    /// Queue files only: the image stays in its class.
    Keep,
}

/// Where an item stands.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum State {
    Pending,
    /// Moved (to `destination`, relative to the dataset folder) or kept (`class` = given).
    Done {
        class: String,
        destination: String,
    },
}

/// One step of the undo history: the items one request decided, with their manifest rows
/// (None for a kept image, which did not move).
struct Step {
    items: Vec<(usize, Option<Row>)>,
}

/// The model that made the suggestions, as the manifest names it.
#[derive(Debug, Clone, Default)]
pub struct ModelInfo {
    pub slot: String,
    pub run_id: String,
}

/// The session state the page reads and changes.
pub struct Session {
    pub layout: Layout,
    pub batch: String,
    pub user: String,
    pub items: Vec<Item>,
    pub states: Vec<State>,
    by_path: HashMap<String, usize>,
    /// Item index by its absolute path (a move's row names its source so).
    by_abs: HashMap<PathBuf, usize>,
    history: Vec<Step>,
    /// Every class offered: the model's, the dataset's folders, the suggestions, new ones.
    pub classes: BTreeSet<String>,
    pub model: Option<ModelInfo>,
}

/// The answer to a decision or an undo.
#[derive(Debug, Serialize)]
pub struct Changed {
    /// The items whose state changed, by path.
    pub items: BTreeMap<String, State>,
    pub notes: Vec<String>,
}

impl Session {
    /// A session over `items`, with the classes already known.
    pub fn new(
        layout: Layout,
        user: String,
        items: Vec<Item>,
        known: impl IntoIterator<Item = String>,
        model: Option<ModelInfo>,
    ) -> Self {
        let mut classes: BTreeSet<String> = known.into_iter().collect();
        for it in &items {
            if !it.suggested.is_empty() {
                classes.insert(it.suggested.clone());
            }
            classes.extend(it.given.clone());
        }
        classes.retain(|c| check_class_name(c).is_ok());
        Self {
            layout,
            batch: crate::feedback::merge::new_batch(),
            user,
            by_path: items
                .iter()
                .enumerate()
                .map(|(i, it)| (it.path.clone(), i))
                .collect(),
            by_abs: items
                .iter()
                .enumerate()
                .map(|(i, it)| (it.abs.clone(), i))
                .collect(),
            states: vec![State::Pending; items.len()],
            items,
            history: Vec::new(),
            classes,
            model,
        }
    }

    /// How many items are decided.
    pub fn done(&self) -> usize {
        self.states.iter().filter(|s| **s != State::Pending).count()
    }

    /// The index of a queued image by its path, or why the path is refused.
    pub fn find(&self, path: &str) -> Result<usize> {
        crate::util::fsutil::check_relative(path)?;
        match self.by_path.get(path) {
            Some(&i) => Ok(i),
            None => bail!(
                "{path:?} is not in this session's queue: only the images of {} (or of the \
                 queue file) can be shown or sorted",
                self.layout.inbox.display()
            ),
        }
    }

    /// Applies one decision to the images at `paths` (all pending): one undo step.
    pub fn decide(&mut self, paths: &[String], decision: &Decision) -> Result<Changed> {
        if paths.is_empty() {
            bail!("no image named: send at least one path");
        }
        if let Decision::Class(c) = decision {
            check_class_name(c)?;
        }
        let mut idx = Vec::with_capacity(paths.len());
        let mut named = HashSet::with_capacity(paths.len());
        for p in paths {
            let i = self.find(p)?;
            if self.states[i] != State::Pending {
                bail!("{p:?} is already decided (undo it first)");
            }
            if !named.insert(i) {
                bail!("{p:?} is named twice");
            }
            idx.push(i);
        }
        let mut moves = Vec::new();
        let mut kept = Vec::new();
        for &i in &idx {
            let it = &self.items[i];
            match (decision, &it.given) {
                (Decision::Keep, None) => bail!(
                    "{:?} is in the inbox: pick a class or reject it (keep is for queue files)",
                    it.path
                ),
                (Decision::Keep, Some(_)) => kept.push(i),
                (Decision::Class(c), Some(g)) if c == g => kept.push(i),
                _ => moves.push(Move {
                    from: it.abs.clone(),
                    to_dir: self.target(i, decision),
                    row: self.row_for(i, decision),
                }),
            }
        }
        let mut changed = Changed {
            items: BTreeMap::new(),
            notes: Vec::new(),
        };
        let mut step = Step { items: Vec::new() };
        for i in kept {
            let class = self.items[i].given.clone().unwrap_or_default();
            self.states[i] = State::Done {
                class,
                destination: self.items[i].path.clone(),
            };
            step.items.push((i, None));
            changed
                .items
                .insert(self.items[i].path.clone(), self.states[i].clone());
        }
        if !moves.is_empty() {
            let (rows, notes) = relabel::apply(&self.layout, &self.batch, moves)?;
            changed.notes = notes;
            for row in rows {
                let Some(i) = self.index_of_source(&row.source) else {
                    continue;
                };
                self.states[i] = State::Done {
                    class: row.labelled_class.clone(),
                    destination: self.dataset_path(&row.destination),
                };
                changed
                    .items
                    .insert(self.items[i].path.clone(), self.states[i].clone());
                step.items.push((i, Some(row)));
            }
        }
        if let Decision::Class(c) = decision {
            self.classes.insert(c.clone());
        }
        if !step.items.is_empty() {
            self.history.push(step);
        }
        Ok(changed)
    }

    /// Undoes the last step: its images go back where they were.
    pub fn undo(&mut self) -> Result<Changed> {
        let Some(step) = self.history.pop() else {
            bail!("nothing to undo in this session");
        };
        let rows: Vec<Row> = step.items.iter().filter_map(|(_, r)| r.clone()).collect();
        let (back, notes) = match relabel::revert(&self.layout, &self.batch, &rows) {
            Ok(x) => x,
            Err(e) => {
                self.history.push(step);
                return Err(e);
            }
        };
        let mut changed = Changed {
            items: BTreeMap::new(),
            notes,
        };
        let back: HashSet<(&str, &str)> = back
            .iter()
            .map(|r| (r.source.as_str(), r.destination.as_str()))
            .collect();
        for (i, row) in &step.items {
            let restored = match row {
                None => true,
                Some(r) => back.contains(&(r.source.as_str(), r.destination.as_str())),
            };
            if restored {
                self.states[*i] = State::Pending;
                changed
                    .items
                    .insert(self.items[*i].path.clone(), State::Pending);
            }
        }
        Ok(changed)
    }

    /// The folder a decision moves item `i` into.
    fn target(&self, i: usize, decision: &Decision) -> PathBuf {
        let it = &self.items[i];
        match decision {
            Decision::Reject => self.layout.dataset.join(REJECTED),
            Decision::Class(c) => match &it.given {
                // Beside its class folder (dataset/ or dataset/train/).
                Some(_) => it
                    .abs
                    .parent()
                    .and_then(|p| p.parent())
                    .unwrap_or(&self.layout.dataset)
                    .join(c),
                None => self.layout.accept_root().join(c),
            },
            Decision::Keep => it.abs.parent().unwrap_or(&self.layout.dataset).into(),
        }
    }

    /// The manifest row of a decision (paths, hash and time are filled in by the move).
    fn row_for(&self, i: usize, decision: &Decision) -> Row {
        let it = &self.items[i];
        let m = it.merged.as_ref();
        let from_model = it.suggested_by == "model";
        let model = self.model.clone().unwrap_or_default();
        let (action, class, reason) = match decision {
            Decision::Reject => (
                Action::Rejected,
                String::new(),
                "rejected in flora label".to_string(),
            ),
            Decision::Class(c) => (
                Action::Labelled,
                c.clone(),
                it.given
                    .as_ref()
                    .map(|g| format!("relabelled from {g}"))
                    .unwrap_or_default(),
            ),
            Decision::Keep => (Action::Labelled, String::new(), String::new()),
        };
        Row {
            batch: String::new(),
            action,
            source: String::new(),
            destination: String::new(),
            sha256: String::new(),
            collected_date: m.map(|r| r.collected_date.clone()).unwrap_or_default(),
            predicted_class: it.suggested.clone(),
            confidence: it.confidence,
            slot: if from_model {
                model.slot.clone()
            } else {
                m.map(|r| r.slot.clone()).unwrap_or_default()
            },
            run_id: if from_model {
                model.run_id.clone()
            } else {
                m.map(|r| r.run_id.clone()).unwrap_or_default()
            },
            predicted_by: match it.suggested_by.as_str() {
                "model" => "label",
                other => other,
            }
            .to_string(),
            serve_class: m.map(|r| r.serve_class.clone()).unwrap_or_default(),
            serve_confidence: m.and_then(|r| r.serve_confidence),
            serve_slot: m.map(|r| r.serve_slot.clone()).unwrap_or_default(),
            serve_run_id: m.map(|r| r.serve_run_id.clone()).unwrap_or_default(),
            sidecar: String::new(),
            reason,
            merged_at: String::new(),
            labelled_class: class,
            labelled_by: self.user.clone(),
        }
    }

    fn index_of_source(&self, source: &str) -> Option<usize> {
        self.by_abs.get(&self.layout.abs(source)).copied()
    }

    /// A manifest path as a path relative to the dataset folder.
    fn dataset_path(&self, manifest_path: &str) -> String {
        super::queue::dataset_rel(&self.layout, &self.layout.abs(manifest_path))
    }
}
