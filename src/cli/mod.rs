//! Command-line arguments (clap derive). Each subcommand maps to one function in [`crate::cmd`],
//! which hands the library plain values: [`values`] mirrors the library's own enums for clap,
//! so that the library does not depend on it; [`runs`] holds `flora runs`' arguments.

use std::path::PathBuf;

mod runs;
mod values;
mod version;

use clap::{Args, Parser, Subcommand};

use flora::data::class_weights::ClassWeights;
use flora::track::select::{ModelChoice, SlotChoice};
use flora::util::device::DeviceChoice;
pub use runs::*;
pub use values::*;

/// flora: train, evaluate, serve and retrain an image classifier, in one binary.
#[derive(Debug, Parser)]
#[command(
    name = "flora",
    version,
    long_version = version::long_version(),
    about,
    propagate_version = true,
    after_help = weights_help()
)]
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
    /// See, compare, delete and restore the runs in the run store (default: list them).
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
    /// Sort the inbox in the browser: a local page, keyboard first, hardest images first.
    Label(LabelArgs),
    /// Cross-validate: K models on stable folds, out-of-fold predictions, label-error audit.
    Cv(CvArgs),
    /// Probe a running `flora serve` (GET /health): exit 0 if healthy, for container checks.
    Health(HealthArgs),
    /// Show the pixel cache (decoded images kept between runs), or clear it.
    Cache(CacheArgs),
    /// Export a model to ONNX (optionally with the normalisation inside the graph).
    Export(ExportArgs),
    /// Print the shell completion script for bash, zsh, fish, powershell or elvish.
    Completions(CompletionsArgs),
    /// Write a man page per command (flora.1, flora-train.1, ...) into a folder.
    Man(ManArgs),
}

/// `flora export`
#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The format to write.
    #[arg(long, value_enum, default_value = "onnx")]
    pub format: ExportFormatArg,
    /// Output file (default: <run name or bundle folder>.onnx in the current folder).
    #[arg(long, short, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Take uint8 RGB pixels [batch, size, size, 3] (resized and cropped) and normalise them
    /// inside the graph, so an app needs no mean/std.
    #[arg(long)]
    pub with_preprocess: bool,
    /// Write a statically quantized INT8 model (QDQ: int8 per-channel weights, uint8
    /// activations calibrated on up to 256 images of the run's training split).
    #[arg(long)]
    pub int8: bool,
    /// Calibrate --int8 on this folder-per-class set instead of the run's training split.
    #[arg(long, value_name = "DIR", requires = "int8")]
    pub calibration: Option<PathBuf>,
    /// Replace an existing output file.
    #[arg(long)]
    pub force: bool,
}

/// `flora completions`
#[derive(Debug, Args)]
#[command(
    after_help = "Install: see docs/operations.md (e.g. flora completions bash > \
                        ~/.local/share/bash-completion/completions/flora)."
)]
pub struct CompletionsArgs {
    /// The shell to complete in.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// `flora man`
#[derive(Debug, Args)]
pub struct ManArgs {
    /// Folder for the pages (created if missing; existing pages of the same name are replaced).
    #[arg(long, value_name = "DIR", default_value = "man")]
    pub out: PathBuf,
}

/// `flora cache`: `show` (the default) or `clear`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct CacheArgs {
    #[command(subcommand)]
    pub command: Option<CacheCommand>,
    #[command(flatten)]
    pub show: CacheShowArgs,
}

/// The `flora cache` subcommands.
#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// Where the cache is, its entries and size on disk per image size, and its bound.
    #[command(alias = "info")]
    Show(CacheShowArgs),
    /// Remove every cached image and the file memo (nothing else in the folder).
    Clear(CacheShowArgs),
}

/// `flora cache show`
#[derive(Debug, Clone, Default, Args)]
pub struct CacheShowArgs {
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `flora label`
#[derive(Debug, Args)]
pub struct LabelArgs {
    /// Address to bind (default loopback only; any other needs the label token, FLORA_LABEL_TOKEN or label.token).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1")]
    pub host: String,
    /// Port to bind (0: any free port).
    #[arg(long, value_name = "PORT", default_value_t = 8001)]
    pub port: u16,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Sort the images a CSV lists (path relative to the dataset, given, suggested, p_given,
    /// p_suggested, score), in their class folders, instead of the inbox.
    #[arg(long, value_name = "FILE.csv")]
    pub queue: Option<PathBuf>,
    /// Who decides, as recorded in the manifest (default: $USER).
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
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
    pub arch: Option<ArchArg>,
    /// Seed for split, shuffling, augmentation and init (data.seed).
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// Early-stopping patience in epochs, 0 = off (train.patience).
    #[arg(long, value_name = "N")]
    pub patience: Option<usize>,
    /// MobileNetV2 width multiplier: 0.35, 0.5, 0.75 or 1.0 (train.width).
    #[arg(long, value_name = "W")]
    pub width: Option<f64>,
    /// ImageNet weights to start from: a name flora downloads once (mobilenet_v2, ...; see
    /// --help), or a torchvision .pth / timm model.safetensors file (train.pretrained).
    #[arg(long, value_name = "NAME|FILE", long_help = pretrained_help())]
    pub pretrained: Option<PathBuf>,
    /// Turn augmentation off (data.augment = false).
    #[arg(long)]
    pub no_augment: bool,
    /// Loss weight per class: none, balanced, or class=weight,... (train.class_weights).
    #[arg(long, value_name = "W", value_parser = parse_class_weights)]
    pub class_weights: Option<ClassWeights>,
    /// Training order: shuffle or balanced (train.sampler).
    #[arg(long, value_enum)]
    pub sampler: Option<SamplerArg>,
    /// Run name (default: <arch>-<date>-<time>; a sweep's parent: sweep-<date>-<time>).
    #[arg(long)]
    pub name: Option<String>,
    /// Hyperparameter sweep over [data]/[train] keys: "learning_rate=1e-3,3e-4
    /// batch_size=32,64" (the grid of all combinations), or ranges with --trials
    /// ("learning_rate=1e-4..1e-2:log batch_size=16..64").
    #[arg(long, value_name = "SPEC")]
    pub sweep: Option<String>,
    /// Random search: N trials (1 to 1000) drawn from the --sweep lists and ranges (seeded by
    /// data.seed).
    #[arg(long, value_name = "N", requires = "sweep")]
    pub trials: Option<usize>,
    /// Run only trial I + 1 of the --sweep, as one pod of a Kubernetes Indexed Job (I is
    /// 0-based; without a value, JOB_COMPLETION_INDEX). Every worker names the same --name:
    /// the parent run they share, ranked when the last trial ends.
    #[arg(long, value_name = "I", num_args = 0..=1, requires_all = ["sweep", "name"])]
    pub trial_index: Option<Option<usize>>,
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
    /// Neither use nor fill the pixel cache in this run (cache.enabled = false).
    #[arg(long)]
    pub no_cache: bool,
    /// Where to train: auto, cpu, gpu, gpu:N or wgpu-cpu (train.device; GPUs need a flora built
    /// with the `gpu` feature). With --resume it overrides the run's own.
    #[arg(long, value_name = "DEVICE", value_parser = parse_device)]
    pub device: Option<DeviceChoice>,
}

/// `flora cv`: k-fold cross-validation with a label-error audit; the [`TrainArgs`] flags
/// override the config as for `flora train`.
#[derive(Debug, Args)]
pub struct CvArgs {
    /// Number of folds (2 to 20).
    #[arg(long, default_value_t = 5, value_name = "K")]
    pub folds: usize,
    /// Run only fold I + 1, as one pod of a Kubernetes Indexed Job (I is 0-based; without a
    /// value, JOB_COMPLETION_INDEX). Every worker names the same --name: the parent run they
    /// share, summarised when the last fold ends.
    #[arg(long, value_name = "I", num_args = 0..=1, requires = "name")]
    pub fold: Option<Option<usize>>,
    #[command(flatten)]
    pub train: TrainArgs,
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
    /// Also write report.html (confusion matrix with thumbnails, per-class metrics, accuracy
    /// against coverage, params) into the output folder.
    #[arg(long)]
    pub html: bool,
    /// Suggest the lowest min_confidence whose answered images reach this accuracy (0 to 1).
    #[arg(long, value_name = "X", value_parser = parse_probability)]
    pub target_accuracy: Option<f32>,
    /// Neither use nor fill the pixel cache (cache.enabled = false).
    #[arg(long)]
    pub no_cache: bool,
    /// Where the model runs: cpu (the default: flora's fused CPU path), auto, gpu, gpu:N or
    /// wgpu-cpu (GPUs need a flora built with the `gpu` feature).
    #[arg(long, value_name = "DEVICE", value_parser = parse_device)]
    pub device: Option<DeviceChoice>,
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
    /// Where the model runs: cpu (the default: flora's fused CPU path), auto, gpu, gpu:N or
    /// wgpu-cpu (GPUs need a flora built with the `gpu` feature).
    #[arg(long, value_name = "DEVICE", value_parser = parse_device)]
    pub device: Option<DeviceChoice>,
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
    /// Where the model runs: cpu (the default: flora's fused CPU path), auto, gpu, gpu:N or
    /// wgpu-cpu (GPUs need a flora built with the `gpu` feature).
    #[arg(long, value_name = "DEVICE", value_parser = parse_device)]
    pub device: Option<DeviceChoice>,
}

/// `flora promote`
#[derive(Debug, Args)]
pub struct PromoteArgs {
    /// The run to promote: a unique id prefix or its name.
    #[arg(value_name = "RUN")]
    pub run: Option<String>,
    /// Slot to fill (default: the one that is not live; blue when neither is filled).
    #[arg(long, value_enum)]
    pub to: Option<SlotArg>,
    /// Gate data: folder-per-class images (default: the dataset's test/ folder, else the run's
    /// validation split).
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Promote even if the candidate scores lower than the live model.
    #[arg(long)]
    pub force: bool,
    /// With RUN: also make the slot live. Alone: `--live blue|green` switches the live slot.
    #[arg(long, value_enum, num_args = 0..=1, value_name = "SLOT")]
    pub live: Option<Option<SlotArg>>,
    /// Make the previously live slot live again.
    #[arg(long, conflicts_with_all = ["to", "data", "force"])]
    pub rollback: bool,
    /// The gate neither uses nor fills the pixel cache (cache.enabled = false).
    #[arg(long)]
    pub no_cache: bool,
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

fn parse_class_weights(s: &str) -> Result<ClassWeights, String> {
    let w = ClassWeights::parse(s).map_err(|e| e.to_string())?;
    w.validate().map_err(|e| e.to_string())?;
    Ok(w)
}

fn parse_device(s: &str) -> Result<DeviceChoice, String> {
    s.parse().map_err(|e: anyhow::Error| e.to_string())
}

fn parse_probability(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
        Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
        _ => Err(format!("{s:?} is not a probability between 0 and 1")),
    }
}

/// The model-choosing flags shared by eval, predict, merge and label.
#[derive(Debug, Clone, Default, Args)]
pub struct ModelArgs {
    /// A run: a unique prefix of its id, or its name.
    #[arg(long, value_name = "ID_OR_NAME", conflicts_with_all = ["model", "slot"])]
    pub run: Option<String>,
    /// Any model bundle folder.
    #[arg(long, value_name = "DIR", conflicts_with = "slot")]
    pub model: Option<PathBuf>,
    /// A blue/green slot, or the live one.
    #[arg(long, value_enum)]
    pub slot: Option<SlotChoiceArg>,
}

impl ModelArgs {
    /// The choice as the library takes it.
    pub fn choice(&self) -> ModelChoice {
        ModelChoice {
            run: self.run.clone(),
            model: self.model.clone(),
            slot: self.slot.map(|s| match s {
                SlotChoiceArg::Blue => SlotChoice::Blue,
                SlotChoiceArg::Green => SlotChoice::Green,
                SlotChoiceArg::Live => SlotChoice::Live,
            }),
        }
    }
}

/// Where downloaded weights go, for the help texts.
fn cache_help() -> String {
    let here = flora::util::download::user_cache_dir()
        .map(|d| format!(" (here: {})", d.join("weights").display()))
        .unwrap_or_default();
    format!(
        "They are downloaded once into FLORA_CACHE_DIR/weights/<name>/, else the platform's \
         cache folder: $XDG_CACHE_HOME/flora or ~/.cache/flora (Linux), ~/Library/Caches/flora \
         (macOS), %LOCALAPPDATA%\\flora\\cache (Windows){here}. FLORA_WEIGHTS_MIRROR (or \
         train.pretrained_mirror) fetches them from a mirror serving <name>/<file>."
    )
}

/// `flora --help`'s closing lines: the weights names.
fn weights_help() -> String {
    let names: Vec<String> = flora::model::pretrained::catalog::builtin()
        .into_iter()
        .map(|w| w.name)
        .collect();
    let here = flora::util::download::user_cache_dir()
        .map(|d| d.join("weights").display().to_string())
        .unwrap_or_else(|_| "FLORA_CACHE_DIR/weights".into());
    format!(
        "Pretrained weights by name (flora train --pretrained NAME): {}; downloaded once into \
         {here} (FLORA_CACHE_DIR), see flora train --help.",
        names.join(", ")
    )
}

/// `flora train --help` for --pretrained: the names, where files go, the hashes.
fn pretrained_help() -> String {
    format!(
        "ImageNet weights to start from (train.pretrained; MobileNetV2 only). Either a name, \
         which also sets --arch mobilenet_v2 and the width the weights are for unless those \
         flags are given:\n\n{}\n\nor a [weights.<name>] entry of flora.toml. {} The SHA-256 \
         is checked before use (for torchvision's and timm's GitHub files the 8-digit prefix \
         in their file names, all they publish); the run records the name, URL and full \
         SHA-256. Or a file: a torchvision .pth or timm model.safetensors (write ./NAME for a \
         file named like a weights name).",
        flora::model::pretrained::catalog::help_lines()
            .lines()
            .map(|l| format!("  {l}"))
            .collect::<Vec<_>>()
            .join("\n"),
        cache_help()
    )
}
