//! `POST /predict` and `POST /explain`: an uploaded image through the serving model.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Query, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::IntoParams;

use super::upload::{DecGuard, decode_permit, read_upload};
use crate::data::imaging;
use crate::model::Scored;
use crate::serving::collect::{self, Outcome, Sidecar};
use crate::serving::serve::api::{Collection, ErrorBody, PredictAnswer, Prediction, Upload};
use crate::serving::serve::error::ApiError;
use crate::serving::serve::snapshot::Loaded;
use crate::serving::serve::{App, access};

/// `?top_k=N`
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PredictQuery {
    /// How many of the best classes to list (3 by default; 1 to the number of classes).
    #[param(minimum = 1)]
    top_k: Option<usize>,
}

/// Classifies an uploaded image (`POST /predict`).
///
/// The image comes as a multipart field `file`, or as a raw `image/*` body.
#[utoipa::path(
    post,
    path = "/predict",
    tag = "predict",
    params(PredictQuery),
    request_body(
        description = "The image: a multipart form field `file`, or the raw bytes",
        content(
            (Upload = "multipart/form-data"),
            ("image/*"),
            ("application/octet-stream"),
        ),
    ),
    responses(
        (status = 200, description = "The serving model's answer", body = PredictAnswer),
        (status = 400, description = "A bad query, an empty file, or a form without `file`", body = ErrorBody),
        (status = 403, description = "A cross-origin request", body = ErrorBody),
        (status = 408, description = "The body was not received in time", body = ErrorBody),
        (status = 413, description = "The body is over `serve.max_body_bytes`", body = ErrorBody),
        (status = 415, description = "Not an image flora decodes, or another Content-Type", body = ErrorBody),
        (status = 422, description = "The image could not be decoded (corrupt, or over the decode limits)", body = ErrorBody),
        (status = 503, description = "No model, the inference queue is full, or the server is stopping or overloaded", body = ErrorBody),
    )
)]
pub async fn predict(State(app): State<Arc<App>>, req: Request) -> Result<Response, ApiError> {
    let query = Query::<PredictQuery>::try_from_uri(req.uri())
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_query", e.body_text()))?;
    let (bytes, filename) = read_upload(&app, req).await?;
    if bytes.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "empty_file",
            "the uploaded file is empty",
        ));
    }
    let format = imaging::require_supported(&bytes).map_err(not_an_image)?;

    // The model that answers is fixed here, for the whole request.
    let snap = app.models.snapshot();
    let (label, model) = snap.serving().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_model",
            "no model is loaded",
        )
    })?;
    let model = model.clone();

    let pixels = decode_for(&app, &model, bytes.clone()).await?;

    let probs = app
        .worker
        .predict(model.clone(), pixels)
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "inference",
                format!("{e:#}"),
            )
        })?;
    let classes = model.bundle.meta.classes.len();
    let k = query.top_k.unwrap_or(3).clamp(1, classes);
    let top = model.bundle.top_k(&probs, k);
    let best = top[0].clone();
    let thresholds = match app.thresholds.is_empty() {
        true => &model.bundle.meta.thresholds,
        false => &app.thresholds,
    };
    let is_unknown = thresholds.is_unknown(&best);
    let answer = thresholds.answer(&best).to_string();
    app.metrics
        .prediction(label, &answer, best.confidence, app.low_confidence);
    if is_unknown {
        app.metrics.unknown(label, &best.class);
    }
    let info = match is_unknown {
        true => None,
        false => model.bundle.meta.class_info.get(&best.class),
    };

    let (collected, collection) = if app.collect {
        save_upload(&app, &model, &top, bytes, format, filename).await
    } else {
        (None, Collection::Off)
    };

    let mut resp = Json(PredictAnswer {
        model_used: label,
        run_id: model.bundle.meta.run_id.clone(),
        prediction: Prediction {
            class: answer.clone(),
            confidence: best.confidence,
            unknown: is_unknown,
            info: info.cloned(),
        },
        top_k: top,
        data_collected_at: collected,
        collection,
    })
    .into_response();
    resp.extensions_mut().insert(access::Answered {
        slot: label,
        class: answer,
    });
    Ok(resp)
}

/// Shows why (`POST /explain`): the serving model's heat map for its top class, as PNG.
///
/// The uploaded image (as for `/predict`, never collected) with the occlusion heat map over
/// it. Computed only when asked, one at a time (503 while another runs), decoded under the
/// upload limits.
#[utoipa::path(
    post,
    path = "/explain",
    tag = "predict",
    request_body(
        description = "The image: a multipart form field `file`, or the raw bytes",
        content(
            (Upload = "multipart/form-data"),
            ("image/*"),
            ("application/octet-stream"),
        ),
    ),
    responses(
        (status = 200, description = "The image with the top class's occlusion heat map over it", content_type = "image/png"),
        (status = 400, description = "A form without `file`, or a malformed form", body = ErrorBody),
        (status = 403, description = "A cross-origin request", body = ErrorBody),
        (status = 408, description = "The body was not received in time", body = ErrorBody),
        (status = 413, description = "The body is over `serve.max_body_bytes`", body = ErrorBody),
        (status = 415, description = "Not an image flora decodes, or another Content-Type", body = ErrorBody),
        (status = 422, description = "The image could not be decoded or explained", body = ErrorBody),
        (status = 503, description = "No model, another explanation is running, or the server is stopping or overloaded", body = ErrorBody),
    )
)]
pub async fn explain(State(app): State<Arc<App>>, req: Request) -> Result<Response, ApiError> {
    let (bytes, _) = read_upload(&app, req).await?;
    imaging::require_supported(&bytes).map_err(not_an_image)?;
    let model = app
        .models
        .snapshot()
        .serving()
        .map(|(_, m)| m.clone())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_model",
                "no model is loaded",
            )
        })?;
    let busy = app
        .explain_permits
        .clone()
        .try_acquire_owned()
        .map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "explain_busy",
                "another explanation is being computed: retry in a moment",
            )
        })?;
    let decode = decode_permit(&app).await?;
    let limits = app.limits;
    let running = app.metrics.decodes_running().clone();
    // The permits live in the blocking task: a client that leaves does not free them early.
    let png = tokio::task::spawn_blocking(move || {
        let _permits = (busy, decode);
        running.inc();
        // Decoded at a reduced scale when large: the overlay is shown at 256 to 512 px.
        let shown = crate::evaluate::explain::shown_side(model.bundle.meta.image_size);
        let decoded = imaging::decode_rgb(&bytes, shown, limits);
        drop(DecGuard(running));
        let rgb = decoded?;
        crate::evaluate::explain::top_class_overlay_png(&model.bundle, &rgb)
    })
    .await
    .map_err(|_| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "decode_error",
            "the image could not be explained",
        )
    })?
    .map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "decode_error",
            format!("{e:#}"),
        )
    })?;
    Ok(([(header::CONTENT_TYPE, "image/png")], png).into_response())
}

/// 415 for content that is not an image flora decodes; HEIC, AVIF and the like are named, with
/// how to convert them.
fn not_an_image(e: anyhow::Error) -> ApiError {
    ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "not_an_image",
        format!("{e}"),
    )
}

/// Decodes an upload into the model's input pixels, under the server's decode limits and one
/// of its decode permits.
async fn decode_for(app: &App, model: &Loaded, bytes: Bytes) -> Result<Vec<u8>, ApiError> {
    let size = model.bundle.meta.image_size;
    let limits = app.limits;
    let permit = decode_permit(app).await?;
    let running = app.metrics.decodes_running().clone();
    // The permit lives in the blocking task: if the client goes away, the decode still
    // counts against the limit until it ends.
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        running.inc();
        let _running = DecGuard(running);
        imaging::prepare(&bytes, size, limits).map(image::RgbImage::into_raw)
    })
    .await
    .map_err(|_| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "decode_error",
            "the image could not be decoded",
        )
    })?
    .map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "decode_error",
            format!("{e:#}"),
        )
    })
}

/// Saves an upload with its sidecar under collected_data: where it went (for the answer) and
/// what happened.
async fn save_upload(
    app: &App,
    model: &Loaded,
    top: &[Scored],
    bytes: Bytes,
    format: image::ImageFormat,
    filename: Option<String>,
) -> (Option<String>, Collection) {
    let mut sidecar = Sidecar {
        id: collect::new_id(),
        time: jiff::Timestamp::now().to_string(),
        file: String::new(),
        slot: model.slot.map(|s| s.as_str().to_string()),
        run_id: model.bundle.meta.run_id.clone(),
        predicted_class: top[0].class.clone(),
        confidence: top[0].confidence,
        top_k: top.to_vec(),
        client_filename: filename,
        bytes: 0,
        sha256: String::new(),
    };
    let root = app.collected_dir.clone();
    let min_free = app.collect_min_free_bytes;
    let saved = tokio::task::spawn_blocking(move || {
        collect::collect(&root, &bytes, format, &mut sidecar, min_free)
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))
    .and_then(|r| r);
    match saved {
        Ok(Outcome::Saved(path)) => {
            app.metrics.collected(true);
            (Some(app.display_path(&path)), Collection::Saved)
        }
        Ok(Outcome::Duplicate) => {
            app.metrics.collection_skipped("duplicate");
            (None, Collection::Duplicate)
        }
        Ok(Outcome::LowDisk { free }) => {
            app.metrics.collection_skipped("low_disk");
            eprintln!(
                "warning: not saving an upload: {} has {free} bytes free, below serve.collect_min_free_bytes = {}",
                app.collected_dir.display(),
                app.collect_min_free_bytes
            );
            (None, Collection::LowDisk)
        }
        Err(e) => {
            app.metrics.collected(false);
            eprintln!(
                "error: saving an upload under {}: {e:#}",
                app.collected_dir.display()
            );
            (None, Collection::Failed)
        }
    }
}
