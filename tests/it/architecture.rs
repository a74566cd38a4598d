//! The import rules of ARCHITECTURE.md, checked on the source itself: the library's folders are
//! layers that import only downwards, train and serving never import each other, the library
//! never names clap or the command line, and no two files import each other, directly or
//! round a circle. `use` trees, inline `crate::`/`super::` paths and serde's `with = "..."`
//! paths count; comments, other strings and `#[cfg(test)] mod tests` blocks do not.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The library's top-level folders, lowest layer first. A folder may import its own files and
/// those of lower layers; two folders of the same layer never import each other.
const LAYERS: [(&str, u8); 10] = [
    ("util", 0),
    ("ops", 1),
    ("data", 2),
    ("model", 3),
    ("config", 4),
    ("track", 5),
    ("evaluate", 6),
    ("train", 7),
    ("serving", 7),
    ("feedback", 8),
];

/// The binary's own modules (`src/main.rs` declares them); the library never names them.
const BINARY: [&str; 2] = ["cli", "cmd"];

struct File {
    /// `src/`-relative path, for messages.
    rel: String,
    /// Module path inside its crate (`["model", "bundle"]`; empty for `lib.rs`).
    module: Vec<String>,
    /// The code with comments, strings (but `"crate::..."` ones) and test modules removed.
    code: String,
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("reading src/") {
        let p = e.expect("listing src/").path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn module_of(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .with_extension("")
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

/// The code of a Rust file without comments, string and char literals (a string that starts
/// with `crate::` is kept: serde's `with = "crate::util::exact_f64"` names a module).
fn strip(src: &str) -> String {
    let c: Vec<char> = src.chars().collect();
    let (mut out, mut i) = (String::with_capacity(src.len()), 0);
    while i < c.len() {
        let at = |i: usize, k: usize| c.get(i + k).copied().unwrap_or('\0');
        if at(i, 0) == '/' && at(i, 1) == '/' {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if at(i, 0) == '/' && at(i, 1) == '*' {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && at(i, 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && at(i, 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if at(i, 0) == 'r'
            && (at(i, 1) == '"' || (at(i, 1) == '#' && matches!(at(i, 2), '#' | '"')))
            && !(i > 0 && (c[i - 1].is_alphanumeric() || c[i - 1] == '_'))
        {
            let mut j = i + 1;
            let mut hashes = 0;
            while c[j] == '#' {
                hashes += 1;
                j += 1;
            }
            j += 1;
            loop {
                if c[j] == '"' && (0..hashes).all(|h| c.get(j + 1 + h) == Some(&'#')) {
                    break;
                }
                j += 1;
            }
            out.push_str("\"\"");
            i = j + 1 + hashes;
        } else if at(i, 0) == '"' {
            let mut j = i + 1;
            while c[j] != '"' {
                j += if c[j] == '\\' { 2 } else { 1 };
            }
            let text: String = c[i + 1..j].iter().collect();
            let keep = text.starts_with("crate::") || text.starts_with("super::");
            out.push('"');
            out.push_str(if keep { &text } else { "" });
            out.push('"');
            i = j + 1;
        } else if at(i, 0) == '\'' && at(i, 1) == '\\' {
            let mut j = i + 2;
            while c[j] != '\'' {
                j += 1;
            }
            out.push_str("' '");
            i = j + 1;
        } else if at(i, 0) == '\'' && at(i, 2) == '\'' {
            out.push_str("' '");
            i += 3;
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

/// `code` without its `#[cfg(test)] mod NAME { ... }` blocks.
fn without_test_modules(code: &str) -> String {
    let mut out = code.to_string();
    while let Some(at) = out.find("#[cfg(test)]") {
        let rest = &out[at..];
        let is_mod = rest["#[cfg(test)]".len()..]
            .trim_start()
            .starts_with("mod ");
        let Some(open) = rest.find('{').filter(|_| is_mod) else {
            out.replace_range(at..at + "#[cfg(test)]".len(), "");
            continue;
        };
        let mut depth = 0;
        let mut end = rest.len();
        for (k, ch) in rest[open..].char_indices() {
            match ch {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = open + k + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        out.replace_range(at..at + end, "");
    }
    out
}

fn load(dir: &Path) -> Vec<File> {
    let mut paths = Vec::new();
    rust_files(dir, &mut paths);
    paths.sort();
    paths
        .iter()
        .map(|p| {
            let rel = p.strip_prefix(dir).unwrap();
            let text = std::fs::read_to_string(p).unwrap();
            File {
                rel: rel.to_string_lossy().into_owned(),
                module: module_of(rel),
                code: without_test_modules(&strip(&text)),
            }
        })
        .collect()
}

/// Splits a `use` tree (`a::{b, c::{d, e}}`) into its paths.
fn expand(tree: &str, prefix: &[String], out: &mut Vec<Vec<String>>) {
    let mut parts = Vec::new();
    let (mut depth, mut cur) = (0, String::new());
    for ch in tree.chars() {
        match ch {
            '{' => depth += 1,
            '}' => depth -= 1,
            _ => {}
        }
        if ch == ',' && depth == 0 {
            parts.push(std::mem::take(&mut cur));
        } else {
            cur.push(ch);
        }
    }
    parts.push(cur);
    for part in parts {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        if let Some(open) = part.find('{') {
            let head: Vec<String> = part[..open]
                .split("::")
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect();
            let inner = &part[open + 1..part.rfind('}').unwrap()];
            expand(inner, &[prefix, &head].concat(), out);
        } else {
            let part = part.split(" as ").next().unwrap().trim();
            let segs: Vec<String> = part.split("::").map(|s| s.trim().to_string()).collect();
            out.push([prefix, &segs].concat());
        }
    }
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Every module path the code names, made absolute (`crate::`, `super::`, `self::`, and the
/// first segment of a `use` path): `["model", "bundle", "ModelBundle"]`.
fn named_paths(file: &File) -> Vec<Vec<String>> {
    let code = &file.code;
    let mut raw: Vec<Vec<String>> = Vec::new();
    // `use` declarations.
    let mut from = 0;
    while let Some(k) = code[from..].find("use ") {
        let at = from + k;
        from = at + 4;
        if at > 0 && is_ident(code[..at].chars().next_back().unwrap()) {
            continue;
        }
        let Some(end) = code[at..].find(';') else {
            break;
        };
        expand(&code[at + 4..at + end], &[], &mut raw);
        from = at + end;
    }
    // Inline paths.
    for root in ["crate::", "super::", "self::"] {
        let mut from = 0;
        while let Some(k) = code[from..].find(root) {
            let at = from + k;
            from = at + root.len();
            if at > 0
                && (is_ident(code[..at].chars().next_back().unwrap()) || code[..at].ends_with("::"))
            {
                continue;
            }
            let end = code[at..]
                .find(|c: char| !(is_ident(c) || c == ':'))
                .map_or(code.len(), |e| at + e);
            raw.push(
                code[at..end]
                    .split("::")
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect(),
            );
        }
    }
    raw.into_iter()
        .filter_map(|segs| {
            let mut segs = segs.into_iter().filter(|s| s != "*").peekable();
            let mut module = file.module.clone();
            match segs.peek().map(String::as_str) {
                Some("crate") => {
                    module.clear();
                    segs.next();
                }
                Some("super") => {
                    while segs.peek().map(String::as_str) == Some("super") {
                        module.pop();
                        segs.next();
                    }
                }
                Some("self") => {
                    segs.next();
                }
                _ => return None,
            }
            module.extend(segs.filter(|s| s != "self"));
            // `crate::{...}` seen as an inline path names the crate root: nothing to check.
            (!module.is_empty()).then_some(module)
        })
        .collect()
}

fn layer(top: &str) -> Option<u8> {
    LAYERS
        .iter()
        .find(|(name, _)| *name == top)
        .map(|(_, l)| *l)
}

/// Whether a file belongs to the binary crate (`main.rs` and the modules it declares).
fn in_binary(f: &File) -> bool {
    let top = f.module.first().map(String::as_str);
    f.rel == "main.rs" || top.is_some_and(|t| BINARY.contains(&t))
}

fn library(files: &[File]) -> Vec<&File> {
    files.iter().filter(|f| !in_binary(f)).collect()
}

#[test]
fn every_library_folder_is_a_known_layer() {
    let files = load(&src_dir());
    let tops: BTreeSet<&str> = library(&files)
        .iter()
        .filter_map(|f| f.module.first().map(String::as_str))
        .collect();
    for top in tops {
        assert!(
            layer(top).is_some(),
            "src/{top}/ is in no layer: add it to ARCHITECTURE.md and to LAYERS in tests/it/architecture.rs"
        );
    }
}

#[test]
fn layers_import_only_downwards() {
    let files = load(&src_dir());
    let mut wrong = BTreeSet::new();
    for f in library(&files) {
        let Some(from) = f.module.first() else {
            continue;
        };
        let from_layer = layer(from).unwrap_or(u8::MAX);
        for path in named_paths(f) {
            let Some(to) = path.first() else { continue };
            if to == from {
                continue;
            }
            match layer(to) {
                Some(l) if l < from_layer => {}
                Some(_) => {
                    wrong.insert(format!(
                        "src/{} names {} ({to} is not below {from})",
                        f.rel,
                        path.join("::")
                    ));
                }
                None if BINARY.contains(&to.as_str()) => {
                    wrong.insert(format!(
                        "src/{} names the command line: {}",
                        f.rel,
                        path.join("::")
                    ));
                }
                None => {}
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports that run up a layer or across one:\n  {}",
        wrong.into_iter().collect::<Vec<_>>().join("\n  ")
    );
}

#[test]
fn the_library_does_not_use_clap() {
    let files = load(&src_dir());
    let users: Vec<&str> = library(&files)
        .into_iter()
        .filter(|f| f.code.split(|c: char| !is_ident(c)).any(|w| w == "clap"))
        .map(|f| f.rel.as_str())
        .collect();
    assert!(
        users.is_empty(),
        "library files that use clap (keep it in src/cli/): {users:?}"
    );
    let lib = std::fs::read_to_string(src_dir().join("lib.rs")).unwrap();
    for m in BINARY {
        assert!(
            !lib.contains(&format!("mod {m};")),
            "lib.rs declares the binary's `{m}`"
        );
    }
}

#[test]
fn no_two_files_import_each_other() {
    let files = load(&src_dir());
    let (binary, library): (Vec<&File>, Vec<&File>) = files.iter().partition(|f| in_binary(f));
    for crate_files in [library, binary] {
        let modules: BTreeSet<Vec<String>> = crate_files.iter().map(|f| f.module.clone()).collect();
        let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
        for f in &crate_files {
            for path in named_paths(f) {
                let target = (0..=path.len())
                    .rev()
                    .map(|n| path[..n].to_vec())
                    .find(|m| modules.contains(m))
                    .unwrap_or_default();
                if !target.is_empty() && target != f.module {
                    edges.entry(f.module.clone()).or_default().insert(target);
                }
            }
        }
        let circles = circles(&modules, &edges);
        assert!(
            circles.is_empty(),
            "files that import each other (move what both need into a file below them):\n  {}",
            circles
                .iter()
                .map(|c| c
                    .iter()
                    .map(|m| m.join("/"))
                    .collect::<Vec<_>>()
                    .join(" <-> "))
                .collect::<Vec<_>>()
                .join("\n  ")
        );
    }
}

/// The strongly connected components of more than one module (Tarjan).
fn circles(
    nodes: &BTreeSet<Vec<String>>,
    edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
) -> Vec<Vec<Vec<String>>> {
    struct Tarjan<'a> {
        edges: &'a BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        index: BTreeMap<&'a Vec<String>, usize>,
        low: BTreeMap<&'a Vec<String>, usize>,
        stack: Vec<&'a Vec<String>>,
        on_stack: BTreeSet<&'a Vec<String>>,
        found: Vec<Vec<Vec<String>>>,
    }
    impl<'a> Tarjan<'a> {
        fn visit(&mut self, v: &'a Vec<String>) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            self.on_stack.insert(v);
            for w in self.edges.get(v).into_iter().flatten() {
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let lw = self.low[w];
                    let lv = self.low.get_mut(v).unwrap();
                    *lv = (*lv).min(lw);
                } else if self.on_stack.contains(w) {
                    let iw = self.index[w];
                    let lv = self.low.get_mut(v).unwrap();
                    *lv = (*lv).min(iw);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = Vec::new();
                loop {
                    let w = self.stack.pop().unwrap();
                    self.on_stack.remove(w);
                    component.push(w.clone());
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    self.found.push(component);
                }
            }
        }
    }
    let mut t = Tarjan {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in nodes {
        if !t.index.contains_key(v) {
            t.visit(v);
        }
    }
    t.found
}

#[test]
fn the_checks_see_what_they_should() {
    // The parser itself: a use tree, super, a serde path, a comment and a string that must
    // not count, and a test module that must be skipped.
    let code = strip(
        "use crate::{a::b, c::{d, e::F}};\n// crate::x::y\nlet s = \"crate::g\"; \
         let t = \"not crate::h\";\n#[serde(with = \"crate::util::exact_f64\")]\n\
         fn f() { super::sib::g(); }\n#[cfg(test)]\nmod tests { use crate::z; }\n",
    );
    let file = File {
        rel: "m/n.rs".into(),
        module: vec!["m".into(), "n".into()],
        code: without_test_modules(&code),
    };
    let mut got: Vec<String> = named_paths(&file).iter().map(|p| p.join("::")).collect();
    got.sort();
    got.dedup();
    assert_eq!(
        got,
        [
            "a::b",
            "c::d",
            "c::e::F",
            "g",
            "m::sib::g",
            "util::exact_f64"
        ],
        "{code}"
    );
}
