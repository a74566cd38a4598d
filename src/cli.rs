//! Command-line arguments (clap derive). Each subcommand maps to one function in [`crate::cmd`].

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::model::Arch;
use crate::registry::Slot;
use crate::select::ModelArgs;

/// flora: train, evaluate, serve and retrain an image classifier, in one binary.
#[derive(Debug, Parser)]
#[command(name = "flora", version, about, propagate_version = true)]
pub struct Cli {
    /// Config file; its folder is the base of every relative path in it.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write a commented default flora.toml and the project folders.
    Init(InitArgs),
    /// Train a model on a folder-per-class dataset and log the run.
    Train(TrainArgs),
    /// List the runs in the run store, newest first.
    Runs(RunsArgs),
    /// Evaluate a model: accuracy, per-class precision/recall/F1, confusion matrix.
    Eval(EvalArgs),
    /// Classify images: top-k classes with confidence.
    Predict(PredictArgs),
    /// Serve the live blue/green model over HTTP, with data collection and metrics.
    Serve(ServeArgs),
    /// Put a run's model into the blue or green slot, switch the live slot, or roll back.
    Promote(PromoteArgs),
    /// Show both model slots and which one is live.
    Status(StatusArgs),
    /// Fold collected uploads back into the dataset, pre-sorted by the model.
    Merge(MergeArgs),
    /// Probe a running `flora serve` (GET /health): exit 0 if healthy, for container checks.
    Health(HealthArgs),
}

/// `flora health`
#[derive(Debug, Args)]
pub struct HealthArgs {
    /// The health URL (default: http://HOST:PORT/health from [serve] in flora.toml).
    #[arg(long)]
    pub url: Option<String>,
    /// Seconds to wait for the answer.
    #[arg(long, default_value_t = 3.0)]
    pub timeout: f64,
    /// Print nothing when healthy.
    #[arg(long, short)]
    pub quiet: bool,
}

/// `flora init`
#[derive(Debug, Args)]
pub struct InitArgs {
    /// Project folder (created if missing).
    #[arg(default_value = ".")]
    pub dir: PathBuf,
}

/// `flora train`: every flag overrides the `[data]`/`[train]` key of the same name.
#[derive(Debug, Args)]
#[command(allow_negative_numbers = true)]
pub struct TrainArgs {
    /// Dataset folder (data.dir).
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Number of epochs (train.epochs).
    #[arg(long, value_name = "N")]
    pub epochs: Option<usize>,
    /// Model input size in pixels (data.image_size).
    #[arg(long, value_name = "PX")]
    pub image_size: Option<u32>,
    /// Batch size (train.batch_size).
    #[arg(long, value_name = "N")]
    pub batch_size: Option<usize>,
    /// Learning rate (train.learning_rate).
    #[arg(long, value_name = "LR")]
    pub lr: Option<f64>,
    /// Architecture (train.arch).
    #[arg(long, value_enum)]
    pub arch: Option<Arch>,
    /// Seed for split, shuffling, augmentation and init (data.seed).
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// Early-stopping patience in epochs, 0 = off (train.patience).
    #[arg(long, value_name = "N")]
    pub patience: Option<usize>,
    /// MobileNetV2 width multiplier: 0.35, 0.5, 0.75 or 1.0 (train.width).
    #[arg(long, value_name = "W")]
    pub width: Option<f64>,
    /// ImageNet weights to start from: torchvision .pth or timm model.safetensors
    /// (train.pretrained).
    #[arg(long, value_name = "FILE")]
    pub pretrained: Option<PathBuf>,
    /// Turn augmentation off (data.augment = false).
    #[arg(long)]
    pub no_augment: bool,
    /// Run name (default: <arch>-<date>-<time>; a sweep's parent: sweep-<date>-<time>).
    #[arg(long)]
    pub name: Option<String>,
    /// Hyperparameter sweep over [data]/[train] keys: "learning_rate=1e-3,3e-4
    /// batch_size=32,64" (the grid of all combinations), or ranges with --trials
    /// ("learning_rate=1e-4..1e-2:log batch_size=16..64").
    #[arg(long, value_name = "SPEC")]
    pub sweep: Option<String>,
    /// Random search: N trials drawn from the --sweep lists and ranges (seeded by data.seed).
    #[arg(long, value_name = "N", requires = "sweep")]
    pub trials: Option<usize>,
    /// Continue a KILLED, FAILED or crashed run from its last completed epoch, with its own
    /// config (id, id prefix or name).
    #[arg(long, value_name = "RUN", conflicts_with_all = [
        "data", "epochs", "image_size", "batch_size", "lr", "arch", "seed", "patience", "width",
        "pretrained", "no_augment", "name", "sweep",
    ])]
    pub resume: Option<String>,
    /// With --resume: also continue a FINISHED run, one whose data changed, or a RUNNING one
    /// whose process flora cannot check.
    #[arg(long, requires = "resume")]
    pub force: bool,
}

/// `flora runs`
#[derive(Debug, Args)]
pub struct RunsArgs {
    /// Print JSON lines instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Option<RunsCommand>,
}

/// `flora runs ...`
#[derive(Debug, Subcommand)]
pub enum RunsCommand {
    /// Copy runs to an MLflow tracking server (REST API): params, metrics, tags, artifacts.
    Push(PushArgs),
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

/// `flora eval`
#[derive(Debug, Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Folder-per-class images to evaluate on (default: the dataset's test/ folder, else the
    /// run's validation split).
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Print one JSON object instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Exit with code 3 when accuracy is below this (0 to 1).
    #[arg(long, value_name = "X")]
    pub min_accuracy: Option<f64>,
    /// Where to write the confusion matrix and misclassified.csv (default: the run's artifacts).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

/// `flora predict`
#[derive(Debug, Args)]
pub struct PredictArgs {
    /// Image files or folders (walked recursively).
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    #[command(flatten)]
    pub model: ModelArgs,
    /// How many classes to show per image.
    #[arg(long, default_value_t = 3, value_name = "K")]
    pub top_k: usize,
    /// One JSON line per image.
    #[arg(long)]
    pub json: bool,
    /// Also write why the model decided: an occlusion heat map over each image
    /// (`<name>.explain.png`) and alone (`<name>.heat.png`).
    #[arg(long)]
    pub explain: bool,
    /// Folder for the --explain images.
    #[arg(
        long,
        value_name = "DIR",
        default_value = "explain",
        requires = "explain"
    )]
    pub explain_dir: PathBuf,
}

/// `flora serve`: flags override the `[serve]` keys of the same name.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to bind (serve.host; default loopback only).
    #[arg(long, value_name = "ADDR")]
    pub host: Option<String>,
    /// Port to bind (serve.port).
    #[arg(long, value_name = "PORT")]
    pub port: Option<u16>,
    /// Do not save uploads under collected_data/ (serve.collect = false).
    #[arg(long)]
    pub no_collect: bool,
}

/// `flora promote`
#[derive(Debug, Args)]
pub struct PromoteArgs {
    /// The run to promote: a unique id prefix or its name.
    #[arg(value_name = "RUN")]
    pub run: Option<String>,
    /// Slot to fill (default: the one that is not live; blue when neither is filled).
    #[arg(long, value_enum)]
    pub to: Option<Slot>,
    /// Gate data: folder-per-class images (default: the dataset's test/ folder, else the run's
    /// validation split).
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Promote even if the candidate scores lower than the live model.
    #[arg(long)]
    pub force: bool,
    /// With RUN: also make the slot live. Alone: `--live blue|green` switches the live slot.
    #[arg(long, value_enum, num_args = 0..=1, value_name = "SLOT")]
    pub live: Option<Option<Slot>>,
    /// Make the previously live slot live again.
    #[arg(long, conflicts_with_all = ["to", "data", "force"])]
    pub rollback: bool,
}

/// `flora status`
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `flora merge`
#[derive(Debug, Args)]
#[command(allow_negative_numbers = true)]
pub struct MergeArgs {
    /// Collected uploads folder (default: paths.collected_data).
    #[arg(long, value_name = "DIR")]
    pub from: Option<PathBuf>,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Move images predicted with confidence >= P (0 to 1) straight into dataset/<class>/.
    #[arg(long, value_name = "P", value_parser = parse_probability)]
    pub accept_above: Option<f32>,
    /// Print what would happen and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Put every file of a batch back where it came from.
    #[arg(long, value_name = "BATCH", conflicts_with_all = ["accept_above", "status"])]
    pub undo: Option<String>,
    /// Show what waits in the inbox, by suggested class and by date.
    #[arg(long, conflicts_with_all = ["accept_above", "dry_run"])]
    pub status: bool,
}

fn parse_probability(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
        Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
        _ => Err(format!("{s:?} is not a probability between 0 and 1")),
    }
}
