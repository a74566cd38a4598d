//! Pretrained weights by name, the whole path through the real binary against a local HTTP
//! server (`support::http`) serving a real weights fixture: downloaded once into
//! `FLORA_CACHE_DIR` and then taken from there, a cut download resumed with a `Range` request,
//! a wrong hash refused, a server that is down or stalls, a mirror, a file put in place by
//! hand; and the downloader's lock and restart, through the library. The real publishers'
//! URLs are never fetched.

use std::path::{Path, PathBuf};
use std::process::Output;

use crate::support::common::*;
use crate::support::http::{Server, closed_port};
use flora::util::download::{self, Download};

/// The weights the server serves: flora's torchvision-layout fixture (width 0.5).
fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mobilenet/torchvision_w050.pth")
}

fn fixture_bytes() -> Vec<u8> {
    std::fs::read(fixture()).unwrap()
}

fn fixture_sha() -> String {
    download::sha256_file(&fixture()).unwrap()
}

const FILE: &str = "torchvision_w050.pth";

/// A project of 8 images per class, 1 epoch, whose flora.toml names `[weights.tiny]` at `url`
/// (the fixture's hash, width 0.5), with `extra` TOML in `[train]`.
fn project_with_weights(url: &str, extra: &str) -> tempfile::TempDir {
    let dir = project(8, 1);
    write_config(
        dir.path(),
        1,
        &format!(
            "{extra}\n[weights.tiny]\nurl = \"{url}\"\nsha256 = \"{}\"\nwidth = 0.5\n",
            fixture_sha()
        ),
    );
    dir
}

/// `flora args` in `dir` with `cache` as FLORA_CACHE_DIR, no proxy and no mirror but `env`'s.
fn flora_with(dir: &Path, cache: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut c = flora(dir);
    c.env("FLORA_CACHE_DIR", cache);
    for k in [
        "FLORA_WEIGHTS_MIRROR",
        "FLORA_DOWNLOAD_TIMEOUT",
        "ALL_PROXY",
        "all_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
    ] {
        c.env_remove(k);
    }
    c.envs(env.iter().copied());
    c.args(args).output().expect("running flora")
}

fn succeeded(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "flora failed\nstdout:\n{}\nstderr:\n{err}",
        String::from_utf8_lossy(&out.stdout)
    );
    err
}

fn failed(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "flora should fail\nstderr:\n{err}");
    err
}

fn param(run: &Path, key: &str) -> String {
    std::fs::read_to_string(run.join("params").join(key))
        .unwrap_or_else(|e| panic!("param {key} of {}: {e}", run.display()))
}

/// No run folder under `dir/runs/<exp>/`: a refused set-up created none.
fn no_runs(dir: &Path) {
    let runs = walkdir::WalkDir::new(dir.join("runs"))
        .min_depth(2)
        .max_depth(2)
        .into_iter()
        .flatten()
        .filter(|e| e.path().is_dir())
        .count();
    assert_eq!(runs, 0, "a refused download left a run");
}

#[test]
fn named_weights_are_downloaded_once_then_taken_from_the_cache() {
    let server = Server::start();
    server.serve("/w/torchvision_w050.pth", fixture_bytes());
    let url = server.url("/w/torchvision_w050.pth");
    let dir = project_with_weights(&url, "");
    let cache = tempfile::tempdir().unwrap();

    // The name sets the architecture and width (the config says cnn, width 1.0).
    let err = succeeded(&flora_with(
        dir.path(),
        cache.path(),
        &[],
        &["train", "--pretrained", "tiny", "--name", "first"],
    ));
    assert!(
        err.contains("--pretrained tiny: train.arch = mobilenet_v2, train.width = 0.5"),
        "{err}"
    );
    let cached = cache.path().join("weights/tiny").join(FILE);
    assert_eq!(std::fs::read(&cached).unwrap(), fixture_bytes());
    assert!(!download::part_path(&cached).exists());
    assert_eq!(server.requests().len(), 1, "{:?}", server.requests());
    assert_eq!(server.requests()[0].range, None);

    // The run records the name, the URL and the SHA-256.
    let run = run_dir(dir.path(), "first").unwrap();
    assert_eq!(param(&run, "train.pretrained"), "tiny");
    assert_eq!(param(&run, "pretrained.name"), "tiny");
    assert_eq!(param(&run, "pretrained.url"), url);
    assert_eq!(param(&run, "pretrained.sha256"), fixture_sha());
    assert_eq!(param(&run, "pretrained.file"), cached.display().to_string());
    assert_eq!(param(&run, "train.width"), "0.5");
    let bundle = flora::model::bundle::ModelBundle::load(&run.join("artifacts/model")).unwrap();
    assert_eq!(
        bundle.meta.pretrained.as_deref(),
        Some("tiny (torchvision)")
    );

    // The second run asks the server nothing.
    succeeded(&flora_with(
        dir.path(),
        cache.path(),
        &[],
        &["train", "--pretrained", "tiny", "--name", "second"],
    ));
    assert_eq!(server.requests().len(), 1, "{:?}", server.requests());
    let run = run_dir(dir.path(), "second").unwrap();
    assert_eq!(param(&run, "pretrained.sha256"), fixture_sha());
}

#[test]
fn a_cut_download_is_resumed_with_a_range_request() {
    let server = Server::start();
    server.serve("/w/torchvision_w050.pth", fixture_bytes());
    let dir = project_with_weights(&server.url("/w/torchvision_w050.pth"), "");
    let cache = tempfile::tempdir().unwrap();
    let cached = cache.path().join("weights/tiny").join(FILE);
    let part = download::part_path(&cached);

    // Every transfer of the first run is cut after 500 kB: three tries, each resuming the
    // last, then the run stops, keeping what it has.
    server.cut_next(3, 500_000);
    let err = failed(&flora_with(
        dir.path(),
        cache.path(),
        &[],
        &["train", "--pretrained", "tiny"],
    ));
    assert!(
        err.contains("stopped after 1500000 of") && err.contains("run again to resume"),
        "{err}"
    );
    assert!(err.contains(&part.display().to_string()), "{err}");
    let ranges: Vec<Option<String>> = server.requests().into_iter().map(|r| r.range).collect();
    assert_eq!(
        ranges,
        [
            None,
            Some("bytes=500000-".to_string()),
            Some("bytes=1000000-".to_string())
        ]
    );
    assert_eq!(std::fs::metadata(&part).unwrap().len(), 1_500_000);
    assert!(!cached.exists());
    no_runs(dir.path());

    // The next run asks for the rest only, and trains from the whole file.
    succeeded(&flora_with(
        dir.path(),
        cache.path(),
        &[],
        &["train", "--pretrained", "tiny"],
    ));
    let last = server.requests().pop().unwrap();
    assert_eq!(last.range.as_deref(), Some("bytes=1500000-"));
    assert_eq!(std::fs::read(&cached).unwrap(), fixture_bytes());
    assert!(!part.exists());
}

#[test]
fn a_wrong_hash_is_refused_and_nothing_is_kept() {
    let server = Server::start();
    // Other bytes at the address: timm's fixture instead of torchvision's.
    let wrong = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/mobilenet/timm_mobilenetv2_050.safetensors");
    server.serve("/w/torchvision_w050.pth", std::fs::read(&wrong).unwrap());
    let dir = project_with_weights(&server.url("/w/torchvision_w050.pth"), "");
    let cache = tempfile::tempdir().unwrap();
    let err = failed(&flora_with(
        dir.path(),
        cache.path(),
        &[],
        &["train", "--pretrained", "tiny"],
    ));
    let actual = download::sha256_file(&wrong).unwrap();
    assert!(
        err.contains(&actual) && err.contains(&fixture_sha()) && err.contains("deleted"),
        "both hashes named: {err}"
    );
    let cached = cache.path().join("weights/tiny").join(FILE);
    assert!(!cached.exists() && !download::part_path(&cached).exists());
    no_runs(dir.path());
}

#[test]
fn no_server_gives_the_url_and_where_to_put_the_file() {
    let url = format!("http://127.0.0.1:{}/w/{FILE}", closed_port());
    let dir = project_with_weights(
        &url,
        "arch = \"mobilenet_v2\"\nwidth = 0.5\npretrained = \"tiny\"",
    );
    let cache = tempfile::tempdir().unwrap();
    let cached = cache.path().join("weights/tiny").join(FILE);
    let err = failed(&flora_with(dir.path(), cache.path(), &[], &["train"]));
    for want in [
        url.as_str(),
        &cached.display().to_string(),
        "--pretrained FILE",
        "FLORA_WEIGHTS_MIRROR",
        &fixture_sha(),
    ] {
        assert!(err.contains(want), "{want:?} missing: {err}");
    }
    no_runs(dir.path());

    // Put there by hand, the file is used without any network.
    std::fs::create_dir_all(cached.parent().unwrap()).unwrap();
    std::fs::copy(fixture(), &cached).unwrap();
    succeeded(&flora_with(
        dir.path(),
        cache.path(),
        &[],
        &["train", "--name", "offline"],
    ));
    let run = run_dir(dir.path(), "offline").unwrap();
    assert_eq!(param(&run, "pretrained.sha256"), fixture_sha());
}

#[test]
fn a_mirror_replaces_the_publisher() {
    let server = Server::start();
    server.serve("/m/tiny/torchvision_w050.pth", fixture_bytes());
    // The publisher is down; the mirror (FLORA_WEIGHTS_MIRROR) serves <name>/<file>.
    let origin = format!("http://127.0.0.1:{}/w/{FILE}", closed_port());
    let dir = project_with_weights(&origin, "");
    let cache = tempfile::tempdir().unwrap();
    let mirror = server.url("/m/");
    succeeded(&flora_with(
        dir.path(),
        cache.path(),
        &[("FLORA_WEIGHTS_MIRROR", &mirror)],
        &["train", "--pretrained", "tiny", "--name", "mirrored"],
    ));
    assert_eq!(
        server.requests(),
        [crate::support::http::Request {
            path: "/m/tiny/torchvision_w050.pth".into(),
            range: None
        }]
    );
    let run = run_dir(dir.path(), "mirrored").unwrap();
    assert_eq!(param(&run, "pretrained.url"), origin);
    assert_eq!(param(&run, "pretrained.mirror"), mirror);

    // A built-in name through train.pretrained_mirror: the mirror's file is checked against
    // the hash torchvision publishes (its file name's prefix), and this one is not it.
    server.serve("/m/mobilenet_v2/mobilenet_v2-b0353104.pth", fixture_bytes());
    write_config(
        dir.path(),
        1,
        &format!("pretrained_mirror = \"{}\"", server.url("/m")),
    );
    let err = failed(&flora_with(
        dir.path(),
        cache.path(),
        &[],
        &["train", "--pretrained", "mobilenet_v2"],
    ));
    assert!(
        err.contains("b0353104 (a prefix)") && err.contains(&fixture_sha()),
        "{err}"
    );
    assert_eq!(
        server.requests().last().unwrap().path,
        "/m/mobilenet_v2/mobilenet_v2-b0353104.pth"
    );
    assert!(
        !cache
            .path()
            .join("weights/mobilenet_v2/mobilenet_v2-b0353104.pth")
            .exists()
    );
}

#[test]
fn a_stalled_server_times_out() {
    let server = Server::start();
    server.serve("/w/torchvision_w050.pth", fixture_bytes());
    server.stall(true);
    let dir = project_with_weights(&server.url("/w/torchvision_w050.pth"), "");
    let cache = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let err = failed(&flora_with(
        dir.path(),
        cache.path(),
        &[("FLORA_DOWNLOAD_TIMEOUT", "1")],
        &["train", "--pretrained", "tiny"],
    ));
    assert!(started.elapsed().as_secs() < 30, "{:?}", started.elapsed());
    assert!(
        // Three tries, each given 1000 bytes before the server goes silent.
        err.contains("stopped after 3000 of") && err.contains("run again to resume"),
        "{err}"
    );
}

#[test]
fn unknown_names_are_refused_with_the_known_ones() {
    let dir = project(2, 1);
    let cache = tempfile::tempdir().unwrap();
    let err = failed(&flora_with(
        dir.path(),
        cache.path(),
        &[],
        &["train", "--pretrained", "mobilenet_v9"],
    ));
    assert!(
        err.contains("mobilenet_v9")
            && err.contains("mobilenet_v2, mobilenet_v2.imagenet1k_v1")
            && err.contains("mobilenetv2_100.ra_in1k"),
        "{err}"
    );
    write_config(
        dir.path(),
        1,
        "arch = \"mobilenet_v2\"\npretrained = \"mobilenet_v9\"",
    );
    let err = failed(&flora_with(dir.path(), cache.path(), &[], &["train"]));
    assert!(
        err.contains("train.pretrained = \"mobilenet_v9\" is neither a file")
            && err.contains("mobilenetv2_050"),
        "{err}"
    );
    no_runs(dir.path());
}

#[test]
fn two_downloads_of_one_file_do_not_collide() {
    let server = Server::start();
    server.serve("/w/f.pth", fixture_bytes());
    server.throttle(20); // ~1 s for the whole file: the second caller finds it locked
    let cache = tempfile::tempdir().unwrap();
    let dest = cache.path().join("weights/f/f.pth");
    let (url, sha) = (server.url("/w/f.pth"), fixture_sha());
    let barrier = std::sync::Barrier::new(2);
    let results: Vec<download::Fetched> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    download::fetch(&Download {
                        source: &url,
                        dest: &dest,
                        sha256: &sha,
                    })
                    .unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(server.requests().len(), 1, "{:?}", server.requests());
    assert_eq!(results.iter().filter(|r| r.downloaded).count(), 1);
    assert!(results.iter().all(|r| r.sha256 == sha));
    assert_eq!(std::fs::read(&dest).unwrap(), fixture_bytes());
}

#[test]
fn a_server_without_ranges_restarts_the_download() {
    let server = Server::start();
    server.serve("/w/f.pth", fixture_bytes());
    server.ignore_range(true);
    let cache = tempfile::tempdir().unwrap();
    let dest = cache.path().join("f.pth");
    // A part left by an earlier run, with bytes that are not the file's.
    std::fs::write(download::part_path(&dest), vec![7u8; 1000]).unwrap();
    let got = download::fetch(&Download {
        source: &server.url("/w/f.pth"),
        dest: &dest,
        sha256: &fixture_sha(),
    })
    .unwrap();
    assert!(got.downloaded);
    assert_eq!(server.requests()[0].range.as_deref(), Some("bytes=1000-"));
    assert_eq!(std::fs::read(&dest).unwrap(), fixture_bytes());

    // A cached file that was damaged is fetched again.
    std::fs::write(&dest, b"damaged").unwrap();
    server.ignore_range(false);
    let again = download::fetch(&Download {
        source: &server.url("/w/f.pth"),
        dest: &dest,
        sha256: &fixture_sha(),
    })
    .unwrap();
    assert!(again.downloaded);
    assert_eq!(std::fs::read(&dest).unwrap(), fixture_bytes());
    assert_eq!(server.requests().len(), 2);
}
