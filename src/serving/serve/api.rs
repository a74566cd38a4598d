//! The JSON bodies `flora serve` answers and the upload it reads, as types: the handlers build
//! these, and their schemas in `/openapi.json` come from the same definitions (utoipa). A
//! field that may be null is always sent (`required`).

use std::collections::BTreeMap;

use serde::Serialize;
use utoipa::ToSchema;

use crate::model::Scored;

/// Every error answer: `{"error": "..."}`, saying what is wrong and what to do.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: String,
}

/// An image upload as `multipart/form-data`.
#[derive(ToSchema)]
pub struct Upload {
    /// The image: PNG, JPEG, WebP, GIF, BMP or TIFF.
    #[schema(value_type = String, format = Binary, content_media_type = "application/octet-stream")]
    pub file: Vec<u8>,
}

/// What `GET /health` answers.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// Always `ok`.
    pub status: &'static str,
    /// The slot that answers (`blue`, `green`), or `run` for the fallback run.
    pub model_used: &'static str,
    #[schema(required = true)]
    pub run_id: Option<String>,
}

/// What `GET /models` answers.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelsAnswer {
    /// The live slot (`blue`, `green`), if one is set.
    #[schema(required = true)]
    pub live: Option<&'static str>,
    /// The slot that answers (`blue`, `green`), or `run` for the fallback run.
    #[schema(required = true)]
    pub model_used: Option<&'static str>,
    pub slots: Slots,
    /// The newest run's bundle, served when no slot is live.
    #[schema(required = true)]
    pub fallback_run: Option<ModelInfo>,
}

/// What each slot holds (null when empty).
#[derive(Debug, Serialize, ToSchema)]
pub struct Slots {
    #[schema(required = true)]
    pub blue: Option<ModelInfo>,
    #[schema(required = true)]
    pub green: Option<ModelInfo>,
}

/// A loaded model: its run, classes and metrics, and how it was promoted.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelInfo {
    /// Whether this model answers the predictions.
    pub live: bool,
    #[schema(required = true)]
    pub run_id: Option<String>,
    #[schema(required = true)]
    pub run_name: Option<String>,
    /// `cnn` or `mobilenet_v2`.
    pub arch: &'static str,
    /// The input side in pixels.
    pub image_size: u32,
    pub classes: Vec<String>,
    /// Best validation metrics (`val_accuracy`, `val_loss`, `best_epoch`).
    pub metrics: BTreeMap<String, f64>,
    #[schema(required = true)]
    pub promoted_at: Option<String>,
    #[schema(required = true)]
    pub promoted_by: Option<String>,
    /// The test accuracy the promotion gate measured.
    #[schema(required = true)]
    pub gate_accuracy: Option<f64>,
    pub data_fingerprint: String,
}

/// What `POST /predict` answers.
#[derive(Debug, Serialize, ToSchema)]
pub struct PredictAnswer {
    /// The slot that answered (`blue`, `green`), or `run` for the fallback run.
    pub model_used: &'static str,
    #[schema(required = true)]
    pub run_id: Option<String>,
    pub prediction: Prediction,
    /// The best classes, best first (`?top_k`, 3 by default).
    pub top_k: Vec<Scored>,
    /// Where the upload was saved (relative to the project), when it was.
    #[schema(required = true)]
    pub data_collected_at: Option<String>,
    pub collection: Collection,
}

/// The answer: the best class, or `unknown` below its confidence threshold.
#[derive(Debug, Serialize, ToSchema)]
pub struct Prediction {
    pub class: String,
    pub confidence: f32,
    /// Whether the best class fell below its threshold (then `class` is `unknown`).
    pub unknown: bool,
    /// The class's facts from `[class_info.<name>]` in flora.toml, if any.
    #[schema(required = true)]
    pub info: Option<BTreeMap<String, serde_json::Value>>,
}

/// What became of the upload (`flora serve --collect`).
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Collection {
    /// Not collecting.
    Off,
    Saved,
    /// The same image was collected before.
    Duplicate,
    /// Skipped: too little free disk (`serve.collect_min_free_bytes`).
    LowDisk,
    /// Saving failed (the server's log says why).
    Failed,
}

/// What `POST /admin/switch-model` answers.
#[derive(Debug, Serialize, ToSchema)]
pub struct Switched {
    /// The slot now live.
    pub live: &'static str,
    /// The slot (or `run`) that answered before.
    #[schema(required = true)]
    pub previous: Option<&'static str>,
    #[schema(required = true)]
    pub run_id: Option<String>,
}
