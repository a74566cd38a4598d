//! `flora label`: sort the inbox (`dataset/_UNLABELED_SORT_ME/`) in the browser.
//!
//! - [`queue`]: what is shown (the inbox with merge's record of each image, or a queue file)
//!   and the model's suggestions;
//! - [`files`]: reading a queued image safely, and the grid's thumbnails;
//! - [`session`]: the decisions, one merge batch per session, each move journalled by
//!   [`crate::feedback::merge::relabel`], undoable one step at a time;
//! - [`server`]: the page and its API, behind the token / Host / Origin checks.

pub mod files;
pub mod queue;
pub mod server;
pub mod session;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};

use crate::config::Settings;
use crate::feedback::merge::{self, Layout};
use crate::track::select::{self, ModelChoice};
use queue::Suggester;
use session::{ModelInfo, Session};

/// The environment variable that sets the page's token (wins over `label.token`).
pub const TOKEN_ENV: &str = "FLORA_LABEL_TOKEN";

/// The page's token: [`TOKEN_ENV`], else `label.token`; blank counts as none.
pub fn label_token(cfg: &crate::config::LabelConfig) -> Option<String> {
    std::env::var(TOKEN_ENV)
        .ok()
        .filter(|t| !t.trim().is_empty())
        .or_else(|| cfg.token.clone().filter(|t| !t.trim().is_empty()))
        .map(|t| t.trim().to_string())
}

/// What `flora label` was asked for.
#[derive(Debug, Clone)]
pub struct Options {
    pub host: String,
    pub port: u16,
    pub model: ModelChoice,
    pub queue: Option<PathBuf>,
    pub user: String,
}

/// The session as it ended: its batch and how many images were decided.
pub struct Summary {
    pub batch: String,
    pub done: usize,
    pub total: usize,
    pub manifest: PathBuf,
}

/// Builds the queue, starts the page and serves it until Ctrl-C or SIGTERM.
pub fn run(settings: &Settings, opts: Options) -> Result<Summary> {
    let layout = Layout::new(settings, None)?;
    let loopback = is_loopback(&opts.host);
    let token = label_token(&settings.config.label);
    if !loopback && token.is_none() {
        bail!(
            "--host {} listens beyond this machine: set {TOKEN_ENV} (or `token` in the [label] \
             section of flora.toml) first: every request must then carry it",
            opts.host
        );
    }
    if token.is_some() && token == crate::serving::serve::admin_token(&settings.config.serve) {
        bail!(
            "the label token is serve's admin token: pick another one for {TOKEN_ENV} (or \
             label.token), since the page keeps it in a browser cookie and it must not open \
             serve's admin endpoints"
        );
    }
    let _session_lock = lock_session(&layout, &opts.user)?;
    let chosen = select::choose_named_or_live(settings, &opts.model)?;
    let model = match &chosen {
        Some(c) => {
            eprintln!("model: {}", c.describe());
            Some(merge::Sorter::load(settings, c)?)
        }
        None => {
            eprintln!("no model (no live slot, no --model/--run/--slot):");
            eprintln!("suggestions are the inbox folders merge sorted the images into");
            None
        }
    };
    let mut items = match &opts.queue {
        Some(file) => queue::from_file(&layout, file)?,
        None => queue::inbox(&layout)?,
    };
    let mut known: Vec<String> = if layout.accept_root().is_dir() {
        crate::data::dataset::class_names(&layout.accept_root())?
    } else {
        Vec::new()
    };
    if let Some(m) = &model {
        eprintln!("suggesting for {} image(s)...", items.len());
        queue::suggest(
            &mut items,
            &Suggester {
                bundle: &m.bundle,
                slot: m.slot.clone(),
                run_id: m.run_id.clone(),
                limits: settings.decode_limits(),
            },
        );
        known.extend(m.bundle.meta.classes.iter().cloned());
    }
    let class_info: serde_json::Map<String, serde_json::Value> = settings
        .config
        .class_info
        .iter()
        .map(|(k, v)| Ok((k.clone(), serde_json::to_value(v)?)))
        .collect::<Result<_>>()?;
    let info = model.as_ref().map(|m| ModelInfo {
        slot: m.slot.clone(),
        run_id: m.run_id.clone(),
    });
    let session = Session::new(layout.clone(), opts.user.clone(), items, known, info);
    let batch = session.batch.clone();
    let total = session.items.len();
    let cfg = &settings.config.serve;
    let app = Arc::new(server::LabelApp {
        session: Mutex::new(session),
        model_name: chosen.as_ref().map(|c| c.describe()),
        model: model.map(|m| Arc::new(m.bundle)),
        class_info,
        explain_permits: Arc::new(tokio::sync::Semaphore::new(1)),
        explaining: server::Running::default(),
        thumbnails: files::Thumbnails::default(),
        roots: files::Roots::of(&layout.dataset),
        token_sha256: token
            .filter(|_| !loopback)
            .map(|t| crate::util::fingerprint::sha256(t.as_bytes())),
        loopback,
        limits: settings.decode_limits(),
        origins: crate::serving::serve::origin::OriginPolicy::new(
            &cfg.allowed_origins,
            &cfg.trusted_proxies,
        ),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let addr = format!("{}:{}", opts.host, opts.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("binding {addr} (is another program using the port?)"))?;
        let local = listener.local_addr()?;
        let host = match local.ip() {
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        };
        println!("{total} image(s) to sort, as batch {batch}");
        println!("(undo the whole session with: flora merge --undo {batch})");
        if loopback {
            println!("flora label: open http://{host}:{}/", local.port());
        } else {
            println!(
                "flora label: open http://{host}:{}/?token=LABEL_TOKEN",
                local.port()
            );
            println!("(with the label token, once: a cookie keeps it)");
            eprintln!("note: listening beyond this machine over plain HTTP: the token travels");
            eprintln!("in clear text unless a TLS proxy is in front");
        }
        use std::io::Write;
        let _ = std::io::stdout().flush();
        axum::serve(
            listener,
            server::router(app.clone()).into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(crate::serving::serve::shutdown_signal())
        .await
        .context("serving")
    })?;
    let s = app.session.lock().expect("session lock");
    Ok(Summary {
        batch: s.batch.clone(),
        done: s.done(),
        total: s.items.len(),
        manifest: layout.manifest(),
    })
}

/// Holds `.merge/label.lock` for the session's life: a second `flora label` on the same
/// dataset would not see this one's moves (its page would offer images already sorted), so it
/// is refused, naming who holds the lock.
fn lock_session(layout: &Layout, user: &str) -> Result<std::fs::File> {
    use std::io::{Read, Seek, Write};
    let path = layout.state_dir().join("label.lock");
    match crate::util::fsutil::lock_file(&path, std::time::Duration::ZERO, "flora label") {
        Ok(mut file) => {
            let who = format!(
                "user {user}, pid {}, since {}\n",
                std::process::id(),
                jiff::Timestamp::now()
            );
            file.set_len(0)?;
            file.rewind()?;
            file.write_all(who.as_bytes())?;
            Ok(file)
        }
        Err(e) if e.downcast_ref::<crate::util::fsutil::Busy>().is_some() => {
            let mut who = String::new();
            if let Ok(mut f) = std::fs::File::open(&path) {
                let _ = f.read_to_string(&mut who);
            }
            bail!(
                "another flora label is sorting this dataset ({}): two sessions would not see \
                 each other's moves; finish that one first (its lock: {})",
                who.trim(),
                path.display()
            )
        }
        Err(e) => Err(e),
    }
}

/// `host` is a loopback address or `localhost`.
fn is_loopback(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost")
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}
