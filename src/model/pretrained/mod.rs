//! ImageNet weights for MobileNetV2, through burn-store: from a file the user has, or by name
//! from [`catalog`] (downloaded once into the user cache, its SHA-256 checked).
//!
//! Two published layouts are told apart by their key names: torchvision's
//! (`features.0.0.weight`…, in a `.pth` file) and timm's (`conv_stem.weight`…, usually a
//! `model.safetensors`). Either may come in either container; the container is told by the
//! file's first bytes. Each file key maps to one path of [`MobileNetV2`] (see [`burn_key`],
//! [`keys`]); the width is checked against the file before anything is applied, and every shape
//! is checked by burn-store's `ApplyResult`.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result, bail};
use burn::store::{
    ApplyResult, KeyRemapper, ModuleSnapshot, ModuleStore, PyTorchToBurnAdapter, PytorchStore,
    SafetensorsStore,
};

use super::mobilenet::{MobileNetV2, NUM_BLOCKS, Plan, WIDTHS};
use super::{Arch, Classifier};

pub mod catalog;
pub mod keys;

use keys::block_expand;
pub use keys::{Head, Layout, burn_key};

/// The file container, from its first bytes.
enum Container {
    Pytorch,
    Safetensors,
}

fn container(path: &Path) -> Result<Container> {
    let mut head = [0u8; 9];
    let mut f = std::fs::File::open(path)
        .with_context(|| format!("opening pretrained weights {}", path.display()))?;
    let n = f.read(&mut head).unwrap_or(0);
    if (n >= 4 && head[..4] == *b"PK\x03\x04")
        || (n >= 2 && head[0] == 0x80 && (2..=5).contains(&head[1]))
    {
        return Ok(Container::Pytorch); // a zip (torch.save) or a legacy pickle (PROTO 2-5)
    }
    if n == 9 && head[8] == b'{' {
        return Ok(Container::Safetensors); // u64 header length, then the JSON header
    }
    bail!(
        "{} is neither a PyTorch checkpoint (.pth) nor a safetensors file",
        path.display()
    )
}

/// Loads MobileNetV2 weights from `path` into `model` (at `width`); returns the model and the
/// file's layout. Errors name the file, and the tensor when a shape does not match.
pub fn load(
    mut model: MobileNetV2,
    width: f64,
    path: &Path,
    head: Head,
) -> Result<(MobileNetV2, Layout)> {
    if !path.is_file() {
        bail!(
            "pretrained weights file {} does not exist: point train.pretrained or \
             --pretrained at a file that does, or at a name flora downloads itself \
             (docs/guide/01-train.md, \"Transfer learning\")",
            path.display()
        );
    }
    let kind = container(path)?;
    let file_shapes: BTreeMap<String, Vec<usize>> = match kind {
        Container::Pytorch => {
            shapes(&mut PytorchStore::from_file(path).map_indices_contiguous(false))
        }
        Container::Safetensors => {
            shapes(&mut SafetensorsStore::from_file(path).map_indices_contiguous(false))
        }
    }
    .with_context(|| format!("reading pretrained weights {}", path.display()))?;
    let Some(layout) = Layout::detect(file_shapes.keys()) else {
        bail!(
            "{} does not hold a MobileNetV2 state dict: it has neither torchvision's \
             features.0.0.weight nor timm's conv_stem.weight (first keys: {})",
            path.display(),
            file_shapes
                .keys()
                .take(5)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        );
    };
    let unknown: Vec<&str> = file_shapes
        .keys()
        .map(String::as_str)
        .filter(|k| {
            !k.ends_with(".num_batches_tracked") && burn_key(layout, k, Head::Load).is_none()
        })
        .collect();
    if !unknown.is_empty() {
        bail!(
            "{} ({} layout) has tensors that are not MobileNetV2's: {}",
            path.display(),
            layout.as_str(),
            unknown.join(", ")
        );
    }
    let mapping: BTreeMap<&str, String> = file_shapes
        .keys()
        .filter_map(|k| Some((k.as_str(), burn_key(layout, k, head)?)))
        .collect();
    check_shapes(&model, width, path, &file_shapes, &mapping)?;

    let mut remapper = KeyRemapper::new();
    for (from, to) in &mapping {
        remapper = remapper
            .add_pattern(format!("^{}$", from.replace('.', r"\.")), to.as_str())
            .expect("escaped key is a valid pattern");
    }
    let result = match kind {
        Container::Pytorch => apply(
            &mut model,
            &mut PytorchStore::from_file(path)
                .remap(remapper)
                .map_indices_contiguous(false)
                .allow_partial(true)
                .validate(false),
        ),
        Container::Safetensors => apply(
            &mut model,
            &mut SafetensorsStore::from_file(path)
                .with_from_adapter(PyTorchToBurnAdapter)
                .remap(remapper)
                .map_indices_contiguous(false)
                .allow_partial(true)
                .validate(false),
        ),
    }
    .with_context(|| format!("loading pretrained weights {}", path.display()))?;
    check_result(&result, path, head, &mapping)?;
    Ok((model, layout))
}

/// Checks, before anything is created, that `path` holds weights that [`load_classifier`] can
/// load into an `arch` model at `width` (the same checks, on a throwaway model).
pub fn check(arch: Arch, width: f64, path: &Path) -> Result<()> {
    let device = crate::util::device::inference();
    let model = Classifier::with_width(arch, width, 2, 0.0, &device);
    load_classifier(model, width, path, None).map(|_| ())
}

/// [`load`] for a [`Classifier`], replacing the classifier; returns the model and a
/// description of the source for the bundle: `<name> (<layout>)`, where the name is the
/// weights' catalog name when given, else the file name.
pub fn load_classifier(
    model: Classifier,
    width: f64,
    path: &Path,
    name: Option<&str>,
) -> Result<(Classifier, String)> {
    match model {
        Classifier::MobileNetV2(m) => {
            let (m, layout) = load(m, width, path, Head::Replace)?;
            let name = name.map(str::to_string).unwrap_or_else(|| {
                path.file_name().map_or_else(
                    || path.display().to_string(),
                    |n| n.to_string_lossy().into_owned(),
                )
            });
            Ok((
                Classifier::MobileNetV2(m),
                format!("{name} ({})", layout.as_str()),
            ))
        }
        Classifier::Cnn(_) => bail!(
            "pretrained weights need train.arch = \"{}\"",
            Arch::MobilenetV2.as_str()
        ),
    }
}

fn shapes<S: ModuleStore>(store: &mut S) -> Result<BTreeMap<String, Vec<usize>>> {
    let all = store
        .get_all_tensors()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(all
        .iter()
        .map(|(k, t)| (k.clone(), t.shape.to_vec()))
        .collect())
}

fn apply<S: ModuleStore>(model: &mut MobileNetV2, store: &mut S) -> Result<ApplyResult> {
    model.load_from(store).map_err(|e| anyhow::anyhow!("{e}"))
}

/// Compares the file's shapes with the model's before loading, so a width mismatch is reported
/// as one (with the width the file holds) rather than as a list of tensors.
fn check_shapes(
    model: &MobileNetV2,
    width: f64,
    path: &Path,
    file: &BTreeMap<String, Vec<usize>>,
    mapping: &BTreeMap<&str, String>,
) -> Result<()> {
    let ours: BTreeMap<String, Vec<usize>> = model
        .collect(None, None, false)
        .into_iter()
        .map(|t| (t.name, t.shape.to_vec()))
        .collect();
    let file_by_burn: BTreeMap<&str, &Vec<usize>> = mapping
        .iter()
        .map(|(from, to)| (to.as_str(), &file[*from]))
        .collect();
    let out = |key: &str| file_by_burn.get(key).and_then(|s| s.first().copied());
    let signature: Option<Vec<usize>> = std::iter::once("stem.conv.weight".to_string())
        .chain((0..NUM_BLOCKS).map(|i| {
            let last = if block_expand(i) == 1 { 1 } else { 2 };
            format!("blocks.{i}.layers.{last}.conv.weight")
        }))
        .chain(std::iter::once("last.conv.weight".to_string()))
        .map(|k| out(&k))
        .collect();
    let file_width = signature.and_then(|sig| {
        WIDTHS.into_iter().find(|&w| {
            let p = Plan::new(w);
            let plan: Vec<usize> = std::iter::once(p.stem)
                .chain(p.blocks.iter().map(|b| b.cout))
                .chain(std::iter::once(p.last))
                .collect();
            plan == sig
        })
    });
    if let Some(fw) = file_width
        && fw != width
    {
        bail!(
            "{} holds MobileNetV2 weights of width {fw}, but train.width is {width}: set \
             train.width = {fw} (or pass --width {fw})",
            path.display()
        );
    }
    for (from, to) in mapping {
        let Some(want) = ours.get(to) else { continue };
        let mut got = file[*from].clone();
        if to == "head.weight" {
            got.reverse(); // PyTorch's Linear is [out, in], Burn's [in, out]
        }
        if &got != want {
            bail!(
                "tensor {from} in {} has shape {:?}, but flora's MobileNetV2 (width {width}) \
                 expects {:?} for it ({to}){}",
                path.display(),
                file[*from],
                want,
                if file_width.is_none() {
                    ": the file is not a MobileNetV2 of a width flora knows (0.35, 0.5, 0.75, 1.0)"
                } else {
                    ""
                }
            );
        }
    }
    Ok(())
}

/// Refuses a load that left a backbone tensor unset, met a tensor it could not place, or
/// failed on one (naming it).
fn check_result(
    r: &ApplyResult,
    path: &Path,
    head: Head,
    mapping: &BTreeMap<&str, String>,
) -> Result<()> {
    if let Some(e) = r.errors.first() {
        bail!("{} does not fit flora's MobileNetV2: {e}", path.display());
    }
    let missing: Vec<&str> = r
        .missing
        .iter()
        .map(|(p, _)| p.as_str())
        .filter(|p| !(head == Head::Replace && p.starts_with("head.")))
        .collect();
    if !missing.is_empty() {
        bail!(
            "{} lacks {} of the model's tensors: {}",
            path.display(),
            missing.len(),
            missing.join(", ")
        );
    }
    let unexpected: Vec<&str> = r
        .unused
        .iter()
        .map(String::as_str)
        .filter(|k| mapping.values().any(|v| v == k))
        .collect();
    if !unexpected.is_empty() {
        bail!(
            "{} has tensors flora's MobileNetV2 could not place: {}",
            path.display(),
            unexpected.join(", ")
        );
    }
    Ok(())
}
