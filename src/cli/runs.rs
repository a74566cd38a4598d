//! The arguments of `flora runs` and its subcommands.

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};

use super::ArchArg;

/// `flora runs`: a subcommand, or the `list` flags alone (`flora runs --json`).
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct RunsArgs {
    #[command(subcommand)]
    pub command: Option<RunsCommand>,
    #[command(flatten)]
    pub list: RunsListArgs,
}

/// The `flora runs` subcommands.
#[derive(Debug, Subcommand)]
pub enum RunsCommand {
    /// Table of runs, newest first: name, id, status, arch, epochs, accuracy, data, time.
    List(RunsListArgs),
    /// One run: params, final and best metrics, tags, artifacts, per-epoch results.
    Show(RunsShowArgs),
    /// Runs side by side: the params that differ, the metrics, and a PNG of their curves.
    Compare(RunsCompareArgs),
    /// Soft-delete a run as MLflow does (it stays in place until `flora runs gc`).
    Delete(RunsDeleteArgs),
    /// Bring back a deleted run.
    Restore(RunsRestoreArgs),
    /// Remove deleted runs for good, as `mlflow gc` does.
    Gc(RunsGcArgs),
    /// Copy runs to an MLflow tracking server (REST API): params, metrics, tags, artifacts.
    Push(PushArgs),
}

/// What `flora runs list --sort` orders by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RunsSort {
    /// Newest first.
    #[value(name = "start_time", alias = "started", alias = "start-time")]
    StartTime,
    /// Best validation accuracy, highest first.
    #[value(name = "val_accuracy", alias = "val-accuracy", alias = "accuracy")]
    ValAccuracy,
    /// Latest eval accuracy, highest first.
    #[value(name = "eval_accuracy", alias = "eval-accuracy")]
    EvalAccuracy,
    /// Run name, A to Z.
    Name,
    /// Status, A to Z.
    Status,
    /// Architecture, A to Z.
    Arch,
    /// Epochs run, most first.
    Epochs,
    /// Duration, longest first.
    Duration,
}

/// A run status to filter on (`CRASHED`: RUNNING, but its process is gone).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "UPPER")]
pub enum RunsStatus {
    Running,
    Scheduled,
    Finished,
    Failed,
    Killed,
    Crashed,
}

/// `flora runs list`
#[derive(Debug, Args)]
pub struct RunsListArgs {
    /// Only runs with this status (several: comma-separated).
    #[arg(long, value_enum, ignore_case = true, value_delimiter = ',')]
    pub status: Vec<RunsStatus>,
    /// Only runs of this architecture.
    #[arg(long, value_enum)]
    pub arch: Option<ArchArg>,
    /// Only runs whose name matches this glob (`*`, `?`, `[abc]`), e.g. 'lr-*'.
    #[arg(long, value_name = "GLOB")]
    pub name: Option<String>,
    /// Order of the rows.
    #[arg(long, value_enum, default_value = "start_time")]
    pub sort: RunsSort,
    /// Reverse the order.
    #[arg(long)]
    pub reverse: bool,
    /// At most N rows.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Include deleted runs.
    #[arg(long, conflicts_with = "deleted")]
    pub all: bool,
    /// Only deleted runs.
    #[arg(long)]
    pub deleted: bool,
    /// Print JSON lines instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `flora runs show`
#[derive(Debug, Args)]
pub struct RunsShowArgs {
    /// The run: its name, id or a unique id prefix.
    #[arg(value_name = "RUN")]
    pub run: String,
    /// Print one JSON object instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// `flora runs compare`
#[derive(Debug, Args)]
pub struct RunsCompareArgs {
    /// Two or more runs: names, ids or unique id prefixes.
    #[arg(value_name = "RUN", num_args = 2.., required = true)]
    pub runs: Vec<String>,
    /// Where to write the PNG of the overlaid curves (default: compare-<ids>.png here).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

/// `flora runs delete`
#[derive(Debug, Args)]
pub struct RunsDeleteArgs {
    /// The runs to delete: names, ids or unique id prefixes.
    #[arg(value_name = "RUN", required = true)]
    pub runs: Vec<String>,
    /// Delete even a run whose model a blue/green slot holds (the slot keeps its copy).
    #[arg(long)]
    pub force: bool,
}

/// `flora runs restore`
#[derive(Debug, Args)]
pub struct RunsRestoreArgs {
    /// The deleted runs to bring back: names, ids or unique id prefixes.
    #[arg(value_name = "RUN", required = true)]
    pub runs: Vec<String>,
}

/// `flora runs gc`
#[derive(Debug, Args)]
pub struct RunsGcArgs {
    /// Only runs deleted at least this long ago: 30d, 12h, 2d8h5m20s (as `mlflow gc`).
    #[arg(long, value_name = "AGE")]
    pub older_than: Option<String>,
    /// Say what would be removed and remove nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// `flora runs push`
#[derive(Debug, Args)]
pub struct PushArgs {
    /// Runs to push (id, id prefix or name); a sweep's parent goes before its trials.
    #[arg(required = true, value_name = "RUN")]
    pub runs: Vec<String>,
    /// The tracking server, e.g. https://dagshub.com/USER/REPO.mlflow (default:
    /// MLFLOW_TRACKING_URI). Credentials: MLFLOW_TRACKING_USERNAME and
    /// MLFLOW_TRACKING_PASSWORD, or MLFLOW_TRACKING_TOKEN.
    #[arg(long, value_name = "URL")]
    pub to: Option<String>,
    /// Remote experiment name (default: the run's local experiment name).
    #[arg(long, value_name = "NAME")]
    pub experiment: Option<String>,
}
