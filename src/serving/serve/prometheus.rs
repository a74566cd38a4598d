//! The Prometheus metrics of `flora serve` (prometheus-client), exposed in the text format on
//! `GET /metrics`.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::snapshot::Snapshot;

/// Request labels: `route` and `method` come from fixed sets (`&'static str`), so clients
/// cannot add series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    method: &'static str,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PredictionLabels {
    slot: String,
    class: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SlotLabels {
    slot: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabels {
    slot: String,
    run_id: String,
    run_name: String,
    live: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// Every metric the server keeps, and the registry that encodes them.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_seconds: Family<RouteLabels, Histogram, fn() -> Histogram>,
    predictions: Family<PredictionLabels, Counter>,
    failures: Family<ReasonLabels, Counter>,
    inference_seconds: Histogram,
    batch_size: Histogram,
    confidence: Histogram,
    low_confidence: Counter,
    unknown: Family<PredictionLabels, Counter>,
    live_slot: Family<SlotLabels, Gauge>,
    model_info: Family<ModelLabels, Gauge>,
    model_accuracy: Family<ModelLabels, FloatGauge>,
    model_reloads: Counter,
    collected: Counter,
    collection_failures: Counter,
    collection_skipped: Family<ReasonLabels, Counter>,
    decodes_running: Gauge,
    connections_open: Gauge,
    connections_lingering: Gauge,
    _start_time: FloatGauge,
    resident_memory: Gauge,
    virtual_memory: Gauge,
}

impl Metrics {
    /// Registers every metric. `low_confidence` is the threshold named in the help text.
    pub fn new(low_confidence: f32) -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "flora_http_requests",
            "HTTP requests by route, method and status",
            requests.clone(),
        );
        let request_seconds: Family<RouteLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(request_seconds_ctor);
        registry.register(
            "flora_http_request_duration_seconds",
            "HTTP request latency by route, in seconds",
            request_seconds.clone(),
        );
        let predictions = Family::<PredictionLabels, Counter>::default();
        registry.register(
            "flora_predictions",
            "Predictions by answering slot and predicted class",
            predictions.clone(),
        );
        let failures = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "flora_failures",
            "Failed requests and internal failures by reason",
            failures.clone(),
        );
        let inference_seconds = Histogram::new(exponential_buckets(0.0002, 2.0, 16));
        registry.register(
            "flora_inference_duration_seconds",
            "Model forward pass time per batch, in seconds",
            inference_seconds.clone(),
        );
        let batch_size = Histogram::new(exponential_buckets(1.0, 2.0, 8));
        registry.register(
            "flora_inference_batch_size",
            "Images per model forward pass",
            batch_size.clone(),
        );
        let confidence = Histogram::new([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99]);
        registry.register(
            "flora_prediction_confidence",
            "Confidence of the top class of each prediction",
            confidence.clone(),
        );
        let low = Counter::default();
        registry.register(
            "flora_low_confidence",
            format!("Predictions whose confidence was below {low_confidence} (a drift signal)"),
            low.clone(),
        );
        let unknown = Family::<PredictionLabels, Counter>::default();
        registry.register(
            "flora_unknown_answers",
            "Predictions answered \"unknown\" (top class below its min_confidence), by slot and \
             the top class",
            unknown.clone(),
        );
        let live_slot = Family::<SlotLabels, Gauge>::default();
        registry.register(
            "flora_live_slot",
            "1 for the slot that answers predictions, 0 for the other",
            live_slot.clone(),
        );
        let model_info = Family::<ModelLabels, Gauge>::default();
        registry.register(
            "flora_model_info",
            "The loaded models: 1 per slot (or fallback run), with its run",
            model_info.clone(),
        );
        let model_accuracy = Family::<ModelLabels, FloatGauge>::default();
        registry.register(
            "flora_model_accuracy",
            "Accuracy of each loaded slot's model on the promote gate's data, at promotion",
            model_accuracy.clone(),
        );
        let model_reloads = Counter::default();
        registry.register(
            "flora_model_changes",
            "Changes of the loaded models or the live slot since start",
            model_reloads.clone(),
        );
        let collected = Counter::default();
        registry.register(
            "flora_collected_images",
            "Uploads saved under collected_data/",
            collected.clone(),
        );
        let collection_failures = Counter::default();
        registry.register(
            "flora_collection_failures",
            "Uploads that could not be saved (the prediction was still answered)",
            collection_failures.clone(),
        );
        let collection_skipped = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "flora_collection_skipped",
            "Uploads not saved on purpose: duplicate (same bytes already collected) or low_disk \
             (less free space than serve.collect_min_free_bytes); the prediction was answered",
            collection_skipped.clone(),
        );
        let decodes_running = Gauge::default();
        registry.register(
            "flora_decodes_running",
            "Uploads being decoded now (at most serve.max_decodes)",
            decodes_running.clone(),
        );
        let connections_open = Gauge::default();
        registry.register(
            "flora_connections_open",
            "HTTP connections being served now (at most serve.max_connections)",
            connections_open.clone(),
        );
        let connections_lingering = Gauge::default();
        registry.register(
            "flora_connections_lingering",
            "Closed connections still draining what their client sends (a lingering close, at \
             most serve.max_connections)",
            connections_lingering.clone(),
        );
        let start_time = FloatGauge::default();
        start_time.set(process_start_seconds());
        registry.register(
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch, in seconds",
            start_time.clone(),
        );
        let resident_memory = Gauge::default();
        registry.register(
            "process_resident_memory_bytes",
            "Resident memory size, in bytes",
            resident_memory.clone(),
        );
        let virtual_memory = Gauge::default();
        registry.register(
            "process_virtual_memory_bytes",
            "Virtual memory size, in bytes",
            virtual_memory.clone(),
        );
        Self {
            registry,
            requests,
            request_seconds,
            predictions,
            failures,
            inference_seconds,
            batch_size,
            confidence,
            low_confidence: low,
            unknown,
            live_slot,
            model_info,
            model_accuracy,
            model_reloads,
            collected,
            collection_failures,
            collection_skipped,
            decodes_running,
            connections_open,
            connections_lingering,
            _start_time: start_time,
            resident_memory,
            virtual_memory,
        }
    }

    /// Counts one finished HTTP request (`route` and `method` from fixed sets).
    pub fn request(&self, route: &'static str, method: &'static str, status: u16, took: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                route,
                method,
                status,
            })
            .inc();
        self.request_seconds
            .get_or_create(&RouteLabels { route })
            .observe(took.as_secs_f64());
    }

    /// Counts one answered prediction.
    pub fn prediction(&self, slot: &str, class: &str, confidence: f32, low_threshold: f32) {
        self.predictions
            .get_or_create(&PredictionLabels {
                slot: slot.into(),
                class: class.into(),
            })
            .inc();
        self.confidence.observe(confidence as f64);
        if confidence < low_threshold {
            self.low_confidence.inc();
        }
    }

    /// Counts one prediction answered "unknown"; `top_class` is the class below its threshold.
    pub fn unknown(&self, slot: &str, top_class: &str) {
        self.unknown
            .get_or_create(&PredictionLabels {
                slot: slot.into(),
                class: top_class.into(),
            })
            .inc();
    }

    /// Counts one failure.
    pub fn failure(&self, reason: &'static str) {
        self.failures.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// Counts one upload whose collection was skipped on purpose (`duplicate`, `low_disk`).
    pub fn collection_skipped(&self, reason: &'static str) {
        self.collection_skipped
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// The gauge of decodes running now.
    pub fn decodes_running(&self) -> &Gauge {
        &self.decodes_running
    }

    /// The gauge of connections open now.
    pub fn connections_open(&self) -> &Gauge {
        &self.connections_open
    }

    /// Connections closed by the server that still linger ([`super::linger`]).
    pub fn connections_lingering(&self) -> &Gauge {
        &self.connections_lingering
    }

    /// Records one forward pass of `batch` images.
    pub fn inference(&self, batch: usize, took: Duration) {
        self.inference_seconds.observe(took.as_secs_f64());
        self.batch_size.observe(batch as f64);
    }

    /// Counts one collected upload, or one that failed to save.
    pub fn collected(&self, ok: bool) {
        if ok {
            self.collected.inc();
        } else {
            self.collection_failures.inc();
            self.failure("collection");
        }
    }

    /// Publishes which models are loaded and which one is live.
    pub fn models_changed(&self, snap: &Snapshot, initial: bool) {
        if !initial {
            self.model_reloads.inc();
        }
        let serving = snap.serving().map(|(label, _)| label);
        for slot in crate::track::slots::Slot::ALL {
            self.live_slot
                .get_or_create(&SlotLabels {
                    slot: slot.as_str().into(),
                })
                .set(i64::from(serving == Some(slot.as_str())));
        }
        self.model_info.clear();
        self.model_accuracy.clear();
        for (label, loaded) in snap.loaded() {
            let labels = ModelLabels {
                slot: label.into(),
                run_id: loaded.bundle.meta.run_id.clone().unwrap_or_default(),
                run_name: loaded.bundle.meta.run_name.clone().unwrap_or_default(),
                live: (serving == Some(label)).to_string(),
            };
            if let Some(acc) = loaded.info.as_ref().and_then(|i| i.accuracy) {
                self.model_accuracy.get_or_create(&labels).set(acc);
            }
            self.model_info.get_or_create(&labels).set(1);
        }
    }

    /// The metrics in the Prometheus text format.
    pub fn encode(&self) -> String {
        if let Some((rss, vsz)) = memory() {
            self.resident_memory.set(rss as i64);
            self.virtual_memory.set(vsz as i64);
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

fn request_seconds_ctor() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// (resident, virtual) memory of this process in bytes, from /proc/self/statm.
pub fn memory() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/self/statm").ok()?;
    let mut it = text.split_whitespace();
    let vsz: u64 = it.next()?.parse().ok()?;
    let rss: u64 = it.next()?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    Some((rss * page, vsz * page))
}

/// The process start time in seconds since the epoch: from /proc (boot time + start ticks),
/// or now when /proc cannot tell.
fn process_start_seconds() -> f64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    (|| -> Option<f64> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the command name (which may hold spaces) start after the last ')'.
        let rest = &stat[stat.rfind(')')? + 2..];
        let ticks: f64 = rest.split_whitespace().nth(19)?.parse().ok()?;
        let btime: f64 = std::fs::read_to_string("/proc/stat")
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("btime ").map(|v| v.trim().parse().ok()))??;
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        Some(btime + ticks / hz)
    })()
    .unwrap_or(now)
}
