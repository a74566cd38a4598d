//! `flora completions`, `flora man` and `flora --version`: bash loads the completion script
//! and completes subcommands and flags, the man pages render with `man -l`, and the version
//! names the commit, the features and the kernel build.

use std::path::Path;
use std::process::Command;

use flora::ops::simd::{Kernels, cpu_kernels};

use crate::support::common::{fails, flora, ok, outside_program};

/// Sources the bash completion script in a fresh `bash`, runs `script` after it and returns
/// its stdout.
fn in_bash(dir: &Path, script: &str) -> String {
    let completions = dir.join("flora.bash");
    std::fs::write(&completions, ok(dir, &["completions", "bash"])).unwrap();
    let out = Command::new("bash")
        .args(["--norc", "--noprofile", "-c"])
        .arg(format!(
            "set -e\nsource {}\n{script}",
            completions.display()
        ))
        .output()
        .expect("running bash");
    assert!(
        out.status.success(),
        "bash failed\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// What bash completes for the command line `words` (the last word is the one completed),
/// driving the registered function as readline would.
fn complete(dir: &Path, words: &[&str]) -> Vec<String> {
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let cword = words.len() - 1;
    let prev = if cword > 0 { words[cword - 1] } else { "" };
    let script = format!(
        "COMP_WORDS=({words})\nCOMP_CWORD={cword}\nCOMP_LINE=\"${{COMP_WORDS[*]}}\"\n\
         COMP_POINT=${{#COMP_LINE}}\nfn=$(complete -p flora | sed -E 's/.*-F ([^ ]+).*/\\1/')\n\
         \"$fn\" flora '{cur}' '{prev}'\nprintf '%s\\n' \"${{COMPREPLY[@]}}\"",
        words = quoted.join(" "),
        cur = words[cword],
    );
    in_bash(dir, &script).lines().map(str::to_owned).collect()
}

#[test]
fn bash_completes_subcommands_and_flags() {
    let dir = tempfile::tempdir().unwrap();
    let registered = in_bash(dir.path(), "complete -p flora");
    assert!(
        registered.contains("-F _flora") && registered.trim_end().ends_with(" flora"),
        "complete -p flora: {registered}"
    );

    let subcommands = complete(dir.path(), &["flora", ""]);
    for name in ["train", "eval", "serve", "runs", "completions", "man"] {
        assert!(
            subcommands.iter().any(|s| s == name),
            "{name} not in {subcommands:?}"
        );
    }
    assert_eq!(complete(dir.path(), &["flora", "tr"]), ["train"]);

    let flags = complete(dir.path(), &["flora", "train", "--ep"]);
    assert_eq!(flags, ["--epochs"]);
    let flags = complete(dir.path(), &["flora", "train", "--"]);
    for flag in ["--epochs", "--batch-size", "--arch", "--resume", "--config"] {
        assert!(flags.iter().any(|f| f == flag), "{flag} not in {flags:?}");
    }
    // Subcommands of subcommands, and the values of an enum argument.
    assert!(complete(dir.path(), &["flora", "runs", ""]).contains(&"compare".to_owned()));
    let shells = complete(dir.path(), &["flora", "completions", ""]);
    for shell in ["bash", "zsh", "fish", "powershell", "elvish"] {
        assert!(
            shells.iter().any(|s| s == shell),
            "{shell} not in {shells:?}"
        );
    }
}

#[test]
fn every_shell_gets_a_script() {
    let dir = tempfile::tempdir().unwrap();
    for (shell, marker) in [
        ("zsh", "#compdef flora"),
        ("fish", "complete -c flora"),
        ("powershell", "Register-ArgumentCompleter"),
        ("elvish", "edit:completion:arg-completer[flora]"),
    ] {
        let script = ok(dir.path(), &["completions", shell]);
        assert!(script.contains(marker), "{shell}: no {marker}");
        assert!(script.contains("epochs"), "{shell}: no --epochs");
    }
    let err = fails(dir.path(), &["completions", "tcsh"]);
    assert!(
        err.contains("invalid value 'tcsh'") && err.contains("bash"),
        "{err}"
    );
}

/// Renders a man page as plain text, its words one space apart: `man -l` (groff underneath).
fn render_man(page: &Path) -> String {
    let Some(man) = outside_program(
        Path::new("/usr/bin/man"),
        "man (man-db)",
        "apt-get install man-db groff-base",
    ) else {
        return String::new();
    };
    let out = Command::new(man)
        .args(["-l", "-P", "cat"])
        .arg(page)
        .env("MANWIDTH", "120")
        .env("LC_ALL", "C.UTF-8")
        .output()
        .expect("running man");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "man -l {page:?}: {stderr}"
    );
    // Overstrike bold/underline (when no terminal is set) back to plain text.
    let text = String::from_utf8(out.stdout).unwrap();
    let mut plain = String::new();
    for c in text.chars() {
        if c == '\u{8}' {
            plain.pop();
        } else {
            plain.push(c);
        }
    }
    // Justified text: one space between words, lines joined.
    plain.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[test]
fn man_pages_per_command_render() {
    let dir = tempfile::tempdir().unwrap();
    let said = ok(dir.path(), &["man", "--out", "pages"]);
    let pages = dir.path().join("pages");
    let mut names: Vec<String> = std::fs::read_dir(&pages)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for name in [
        "flora.1",
        "flora-train.1",
        "flora-runs-show.1",
        "flora-cache-clear.1",
        "flora-man.1",
    ] {
        assert!(names.iter().any(|n| n == name), "{name} not in {names:?}");
    }
    assert!(!names.iter().any(|n| n.contains("help")), "{names:?}");
    assert!(
        said.contains(&format!("{} man pages", names.len())),
        "{said}"
    );

    let train = render_man(&pages.join("flora-train.1"));
    if !train.is_empty() {
        assert!(train.contains("flora-train - Train a model"), "{train}");
        for text in [
            "--epochs <N>",
            "Number of epochs (train.epochs)",
            "--resume <RUN>",
            "--config <FILE>",
        ] {
            assert!(train.contains(text), "no {text} in\n{train}");
        }
        let top = render_man(&pages.join("flora.1"));
        for text in [
            "flora-train(1)",
            "flora-completions(1)",
            "Pretrained weights by name",
        ] {
            assert!(top.contains(text), "no {text} in\n{top}");
        }
        // The pages describe the binary, not the machine that wrote them.
        assert!(!top.contains("kernels:"), "{top}");
    }

    // Without --out: man/ in the current folder; a second run replaces the pages.
    ok(dir.path(), &["man"]);
    ok(dir.path(), &["man"]);
    assert!(dir.path().join("man/flora-train.1").is_file());
    // A file where the folder should be: a clear error.
    std::fs::write(dir.path().join("taken"), "x").unwrap();
    let err = fails(dir.path(), &["man", "--out", "taken"]);
    assert!(
        err.contains("cannot create the man page folder taken"),
        "{err}"
    );
}

/// `flora --version` with `FLORA_KERNELS` set to `cap` (None: unset).
fn version(cap: Option<&str>) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = flora(dir.path());
    cmd.env_remove("FLORA_KERNELS")
        .env_remove("FLORA_PORTABLE_KERNELS");
    if let Some(cap) = cap {
        cmd.env("FLORA_KERNELS", cap);
    }
    let out = cmd.arg("--version").output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn version_names_commit_features_and_kernels() {
    let text = version(None);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        format!("flora {}", env!("CARGO_PKG_VERSION")),
        "{text}"
    );

    let root = env!("CARGO_MANIFEST_DIR");
    let commit = Command::new("git")
        .args(["-C", root, "rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8(o.stdout).unwrap().trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
    assert_eq!(lines[1], format!("commit: {commit}"), "{text}");

    let manifest = std::fs::read_to_string(Path::new(root).join("Cargo.toml")).unwrap();
    assert!(lines[2].starts_with("features: "), "{text}");
    if !manifest.contains("[features]") {
        assert_eq!(lines[2], "features: none");
    }

    let cpu = cpu_kernels();
    assert_eq!(lines[3], format!("kernels: {}", cpu.name()), "{text}");
    assert!(["AVX-512", "AVX2", "portable"].contains(&cpu.name()));

    let portable = version(Some("portable"));
    let expected = if cpu == Kernels::Portable {
        "kernels: portable".to_owned()
    } else {
        format!(
            "kernels: portable (capped by FLORA_KERNELS; this CPU runs {})",
            cpu.name()
        )
    };
    assert_eq!(
        portable.lines().nth(3),
        Some(expected.as_str()),
        "{portable}"
    );
    let avx2 = version(Some("avx2"));
    let narrower = cpu.min(Kernels::Avx2).name();
    assert!(
        avx2.lines()
            .nth(3)
            .unwrap()
            .starts_with(&format!("kernels: {narrower}")),
        "{avx2}"
    );
    // -V: the short form.
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(
        ok(dir.path(), &["-V"]),
        format!("flora {}\n", env!("CARGO_PKG_VERSION"))
    );
}
