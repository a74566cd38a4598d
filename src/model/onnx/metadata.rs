//! The exported model's metadata: the keys Ultralytics writes (`names`, `imgsz`, `task`, …,
//! readable by its `AutoBackend`), then flora's own under `flora.` (what an app needs to feed
//! the model the pixels it was trained on, and where the model came from).

use serde_json::json;

use super::proto::StringStringEntryProto;
use crate::model::bundle::BundleMeta;

/// One line for the model's `doc_string`.
pub fn description(meta: &BundleMeta) -> String {
    format!(
        "flora {} image classifier, {} classes, {} px",
        meta.arch.as_str(),
        meta.classes.len(),
        meta.image_size
    )
}

/// How flora turns an image into the model's pixels (what an app must do before the model).
pub fn resize_rule(size: u32) -> String {
    format!(
        "EXIF orientation applied; shorter side resized to {size} px (antialiased bilinear), \
         centre crop {size}x{size}; RGB"
    )
}

/// The metadata entries, in a stable order.
/// `with_preprocess`: the graph takes uint8 pixels; `int8`: it is quantized.
pub fn props(meta: &BundleMeta, with_preprocess: bool, int8: bool) -> Vec<StringStringEntryProto> {
    let names: serde_json::Map<String, serde_json::Value> = meta
        .classes
        .iter()
        .enumerate()
        .map(|(i, c)| (i.to_string(), json!(c)))
        .collect();
    let size = meta.image_size;
    let input = if with_preprocess {
        "uint8 [batch, height, width, 3] RGB 0-255 (resized and cropped); normalised in the graph"
    } else {
        "float32 [batch, 3, height, width], (pixel / 255 - mean) / std"
    };
    let date = jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .map_or_else(|_| String::new(), |t| t.to_string());
    let mut entries: Vec<(&str, String)> = vec![
        ("description", description(meta)),
        ("author", "flora".into()),
        ("date", date),
        ("version", env!("CARGO_PKG_VERSION").into()),
        ("task", "classify".into()),
        ("stride", "1".into()),
        ("channels", "3".into()),
        ("imgsz", json!([size, size]).to_string()),
        ("names", serde_json::Value::Object(names).to_string()),
        ("flora.arch", meta.arch.as_str().into()),
        ("flora.width", json!(meta.width).to_string()),
        ("flora.input", input.into()),
        (
            "flora.output",
            "float32 [batch, classes] probabilities (softmax)".into(),
        ),
        (
            "flora.precision",
            if int8 {
                "int8 (QDQ: int8 per-channel weights, uint8 activations, MinMax calibration)"
            } else {
                "float32"
            }
            .into(),
        ),
        ("flora.mean", floats(&meta.normalization.mean)),
        ("flora.std", floats(&meta.normalization.std)),
        ("flora.resize", resize_rule(size)),
        ("flora.data_fingerprint", meta.data_fingerprint.clone()),
        ("flora.thresholds", json!(meta.thresholds).to_string()),
        ("flora.metrics", json!(meta.metrics).to_string()),
    ];
    if let Some(id) = &meta.run_id {
        entries.push(("flora.run_id", id.clone()));
    }
    if let Some(name) = &meta.run_name {
        entries.push(("flora.run_name", name.clone()));
    }
    if let Some(p) = &meta.pretrained {
        entries.push(("flora.pretrained", p.clone()));
    }
    entries
        .into_iter()
        .map(|(k, v)| StringStringEntryProto {
            key: Some(k.to_string()),
            value: Some(v),
        })
        .collect()
}

/// A JSON array of `f32`s in their shortest form (`[0.485,0.456,0.406]`, not the f64 widening).
fn floats(v: &[f32]) -> String {
    let items: Vec<String> = v.iter().map(|x| format!("{x:?}")).collect();
    format!("[{}]", items.join(","))
}
