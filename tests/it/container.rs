//! The container's final stage, proven without pulling any image: the statically linked flora
//! (`RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --bin flora --target
//! x86_64-unknown-linux-gnu`, as the Dockerfile builds it) runs alone in an empty root
//! filesystem (new namespaces rooted there, with only the `/dev` nodes and `/proc` that a
//! container runtime gives a `FROM scratch` image), serves a real model and answers a
//! prediction, and `flora health` (the image's HEALTHCHECK) probes it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::common::*;

/// The static binary, in the same target folder as the one under test.
fn static_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("FLORA_STATIC_BIN") {
        return p.into();
    }
    let release = flora_bin();
    let target = release.parent().unwrap().parent().unwrap();
    target.join("x86_64-unknown-linux-gnu/release/flora")
}

/// True when the ELF file has no program interpreter, i.e. needs no dynamic loader.
fn is_static_elf(bytes: &[u8]) -> bool {
    assert_eq!(&bytes[..4], b"\x7fELF", "not an ELF file");
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(bytes[0x20..0x28].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    const PT_INTERP: u32 = 3;
    (0..phnum).all(|i| {
        let o = phoff + i * phentsize;
        u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap()) != PT_INTERP
    })
}

/// Runs `/flora args...` with `root` as its whole filesystem, as a container runtime would: in
/// new user, mount and PID namespaces, with only what every runtime provides mounted in
/// (`/dev/{null,zero,random,urandom}`, `/proc`), and the project in `/data`.
fn in_root(root: &Path, args: &[&str]) -> Command {
    let r = root.display();
    let script = format!(
        "set -e; mkdir -p '{r}/dev' '{r}/proc' '{r}/tmp'; \
         for d in null zero random urandom; do touch \"{r}/dev/$d\"; \
         mount --bind \"/dev/$d\" \"{r}/dev/$d\"; done; \
         mount -t proc proc '{r}/proc'; \
         exec chroot '{r}' /flora --config /data/flora.toml \"$@\""
    );
    let mut c = Command::new("unshare");
    c.args([
        "--map-root-user",
        "--mount",
        "--pid",
        "--fork",
        "--kill-child",
        "sh",
        "-c",
        &script,
        "flora",
    ])
    .args(args)
    .env_clear()
    .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    c
}

#[test]
fn static_flora_serves_from_an_empty_root_filesystem() {
    if !cfg!(all(target_os = "linux", target_arch = "x86_64")) {
        skip("the container image is built for x86_64 Linux");
        return;
    }
    let Some(bin) = outside_program(
        &static_bin(),
        "the statically linked flora",
        "build it with: RUSTFLAGS=\"-C target-feature=+crt-static\" cargo build --release --bin flora --target x86_64-unknown-linux-gnu",
    ) else {
        return;
    };
    let bytes = std::fs::read(&bin).unwrap();
    assert!(
        is_static_elf(&bytes),
        "{} is dynamically linked",
        bin.display()
    );
    eprintln!(
        "image content: one {:.1} MB binary and an empty /data",
        bytes.len() as f64 / 1e6
    );

    // The project the container serves: a trained model promoted into the blue slot.
    let project = project(20, 1);
    ok(project.path(), &["train", "--name", "c"]);
    ok(project.path(), &["promote", "c", "--live"]);
    let root = tempfile::tempdir().unwrap();
    std::fs::copy(&bin, root.path().join("flora")).unwrap();
    let data = root.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::copy(project.path().join("flora.toml"), data.join("flora.toml")).unwrap();
    let status = Command::new("cp")
        .arg("-a")
        .arg(project.path().join("models"))
        .arg(&data)
        .status()
        .unwrap();
    assert!(status.success());
    let entries: Vec<String> = std::fs::read_dir(root.path())
        .unwrap()
        .map(|e| name_of(&e.unwrap().path()))
        .collect();
    assert_eq!(
        entries.len(),
        2,
        "nothing but /flora and /data: {entries:?}"
    );

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = in_root(
        root.path(),
        &["serve", "--host", "127.0.0.1", "--port", &port.to_string()],
    )
    .stdout(Stdio::null())
    .stderr(std::fs::File::create(project.path().join("serve.log")).unwrap())
    .spawn()
    .expect("running unshare (util-linux)");
    let health = format!("http://127.0.0.1:{port}/health");
    let start = Instant::now();
    let healthy = loop {
        let out = in_root(root.path(), &["health", "--url", &health])
            .output()
            .unwrap();
        if out.status.success() {
            break true;
        }
        if start.elapsed() > Duration::from_secs(30) || server.try_wait().unwrap().is_some() {
            break false;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        healthy,
        "flora health never saw the server in the empty root; its log:\n{}",
        std::fs::read_to_string(project.path().join("serve.log")).unwrap_or_default()
    );

    let (_, test) = fashion_mnist();
    let img = std::fs::read_dir(test.join("trouser"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut resp = ureq::post(&format!("http://127.0.0.1:{port}/predict"))
        .header("Content-Type", "image/png")
        .send(&std::fs::read(img).unwrap())
        .unwrap();
    let body: serde_json::Value =
        serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap();
    assert_eq!(body["model_used"], "blue", "{body}");
    assert!(body["prediction"]["class"].is_string(), "{body}");
    // Uploads were collected inside the root's /data, nowhere else.
    assert!(data.join("collected_data").is_dir());

    let _ = server.kill();
    let _ = server.wait();
    // A stopped server is unhealthy.
    let out = in_root(root.path(), &["health", "--url", &health, "--timeout", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}
