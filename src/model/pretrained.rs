//! ImageNet weights for MobileNetV2 from a file the user downloaded, through burn-store.
//!
//! Two published layouts are told apart by their key names: torchvision's
//! (`features.0.0.weight`…, in a `.pth` file) and timm's (`conv_stem.weight`…, usually a
//! `model.safetensors`). Either may come in either container; the container is told by the
//! file's first bytes. Each file key maps to one path of [`MobileNetV2`] (see [`burn_key`]); the
//! width is checked against the file before anything is applied, and every shape is checked by
//! burn-store's `ApplyResult`. Nothing is ever downloaded.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result, bail};
use burn::store::{
    ApplyResult, KeyRemapper, ModuleSnapshot, ModuleStore, PyTorchToBurnAdapter, PytorchStore,
    SafetensorsStore,
};

use super::mobilenet::{MobileNetV2, NUM_BLOCKS, Plan, SETTINGS, WIDTHS};
use super::{Arch, Classifier};

/// The key names of a MobileNetV2 state dict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `torchvision.models.mobilenet_v2`: `features.<n>.…`, `classifier.1.…`.
    Torchvision,
    /// timm's `mobilenetv2_*`: `conv_stem`, `bn1`, `blocks.<stage>.<i>.…`, `conv_head`, `bn2`.
    Timm,
}

impl Layout {
    /// The name shown to users.
    pub fn as_str(self) -> &'static str {
        match self {
            Layout::Torchvision => "torchvision",
            Layout::Timm => "timm",
        }
    }

    /// Tells the layout from the file's keys.
    fn detect<'a>(keys: impl IntoIterator<Item = &'a String>) -> Option<Self> {
        keys.into_iter().find_map(|k| match k.as_str() {
            "features.0.0.weight" => Some(Layout::Torchvision),
            "conv_stem.weight" => Some(Layout::Timm),
            _ => None,
        })
    }
}

/// What to do with the file's classifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Head {
    /// Keep the model's freshly initialised classifier (sized for the dataset): the usual
    /// transfer-learning start from a 1000-class ImageNet file.
    Replace,
    /// Load the file's classifier too (its class count must match the model's).
    Load,
}

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
            "pretrained weights file {} does not exist: download it first \
             (docs/guide/01-train.md, \"Transfer learning\") and point train.pretrained or \
             --pretrained at it",
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
    let device = crate::device::inference();
    let model = Classifier::with_width(arch, width, 2, 0.0, &device);
    load_classifier(model, width, path).map(|_| ())
}

/// [`load`] for a [`Classifier`], replacing the classifier; returns the model and a
/// description of the source for the bundle (`file (layout)`).
pub fn load_classifier(model: Classifier, width: f64, path: &Path) -> Result<(Classifier, String)> {
    match model {
        Classifier::MobileNetV2(m) => {
            let (m, layout) = load(m, width, path, Head::Replace)?;
            let name = path.file_name().map_or_else(
                || path.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            );
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

/// The [`MobileNetV2`] path of a file key, or `None` for keys that are not loaded (BatchNorm's
/// `num_batches_tracked`, and the classifier when it is replaced).
pub fn burn_key(layout: Layout, key: &str, head: Head) -> Option<String> {
    let (module, param) = key.rsplit_once('.')?;
    if param == "num_batches_tracked" {
        return None;
    }
    let parts: Vec<&str> = module.split('.').collect();
    let path = match layout {
        Layout::Torchvision => torchvision_module(&parts, head)?,
        Layout::Timm => timm_module(&parts, head)?,
    };
    Some(format!("{path}.{param}"))
}

/// `conv` or `norm` for index 0/1 of torchvision's `Conv2dNormActivation`.
fn conv_or_norm(i: &str) -> Option<&'static str> {
    match i {
        "0" => Some("conv"),
        "1" => Some("norm"),
        _ => None,
    }
}

fn torchvision_module(parts: &[&str], head: Head) -> Option<String> {
    let last = NUM_BLOCKS + 1;
    match parts {
        ["classifier", "1"] => (head == Head::Load).then(|| "head".into()),
        ["features", "0", i] => Some(format!("stem.{}", conv_or_norm(i)?)),
        ["features", n, i] if n.parse::<usize>().ok() == Some(last) => {
            Some(format!("last.{}", conv_or_norm(i)?))
        }
        ["features", n, "conv", rest @ ..] => {
            let block: usize = n.parse::<usize>().ok()?.checked_sub(1)?;
            if block >= NUM_BLOCKS {
                return None;
            }
            let expands = block_expand(block) != 1;
            // expand: conv.0.{0,1}; depthwise: conv.{0|1}.{0,1}; project: conv.{1|2} then norm
            // conv.{2|3}.
            let (layer, part) = match (expands, rest) {
                (_, [i, j]) => (i.parse::<usize>().ok()?, conv_or_norm(j)?),
                (false, ["1"]) => (1, "conv"),
                (false, ["2"]) => (1, "norm"),
                (true, ["2"]) => (2, "conv"),
                (true, ["3"]) => (2, "norm"),
                _ => return None,
            };
            Some(format!("blocks.{block}.layers.{layer}.{part}"))
        }
        _ => None,
    }
}

fn timm_module(parts: &[&str], head: Head) -> Option<String> {
    match parts {
        ["classifier"] => (head == Head::Load).then(|| "head".into()),
        ["conv_stem"] => Some("stem.conv".into()),
        ["bn1"] => Some("stem.norm".into()),
        ["conv_head"] => Some("last.conv".into()),
        ["bn2"] => Some("last.norm".into()),
        ["blocks", stage, i, part] => {
            let stage: usize = stage.parse().ok()?;
            let i: usize = i.parse().ok()?;
            let (_, _, repeats, _) = *SETTINGS.get(stage)?;
            if i >= repeats {
                return None;
            }
            let block = SETTINGS[..stage].iter().map(|s| s.2).sum::<usize>() + i;
            // timm's first block (no expansion) is conv_dw, bn1, conv_pw, bn2.
            let (layer, kind) = match (block_expand(block) != 1, *part) {
                (false, "conv_dw") => (0, "conv"),
                (false, "bn1") => (0, "norm"),
                (false, "conv_pw") => (1, "conv"),
                (false, "bn2") => (1, "norm"),
                (true, "conv_pw") => (0, "conv"),
                (true, "bn1") => (0, "norm"),
                (true, "conv_dw") => (1, "conv"),
                (true, "bn2") => (1, "norm"),
                (true, "conv_pwl") => (2, "conv"),
                (true, "bn3") => (2, "norm"),
                _ => return None,
            };
            Some(format!("blocks.{block}.layers.{layer}.{kind}"))
        }
        _ => None,
    }
}

/// The expansion factor of inverted residual block `block` (0-based).
fn block_expand(block: usize) -> usize {
    let mut end = 0;
    for (t, _, n, _) in SETTINGS {
        end += n;
        if block < end {
            return t;
        }
    }
    unreachable!("block {block} of {NUM_BLOCKS}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_to_model_paths() {
        let tv = |k| burn_key(Layout::Torchvision, k, Head::Load);
        assert_eq!(tv("features.0.0.weight").unwrap(), "stem.conv.weight");
        assert_eq!(
            tv("features.0.1.running_var").unwrap(),
            "stem.norm.running_var"
        );
        assert_eq!(
            tv("features.1.conv.0.0.weight").unwrap(),
            "blocks.0.layers.0.conv.weight"
        );
        assert_eq!(
            tv("features.1.conv.1.weight").unwrap(),
            "blocks.0.layers.1.conv.weight"
        );
        assert_eq!(
            tv("features.1.conv.2.bias").unwrap(),
            "blocks.0.layers.1.norm.bias"
        );
        assert_eq!(
            tv("features.5.conv.1.1.weight").unwrap(),
            "blocks.4.layers.1.norm.weight"
        );
        assert_eq!(
            tv("features.17.conv.3.weight").unwrap(),
            "blocks.16.layers.2.norm.weight"
        );
        assert_eq!(tv("features.18.0.weight").unwrap(), "last.conv.weight");
        assert_eq!(tv("classifier.1.weight").unwrap(), "head.weight");
        assert_eq!(tv("features.3.conv.1.1.num_batches_tracked"), None);
        assert_eq!(
            burn_key(Layout::Torchvision, "classifier.1.bias", Head::Replace),
            None
        );
        let tm = |k| burn_key(Layout::Timm, k, Head::Load);
        assert_eq!(tm("conv_stem.weight").unwrap(), "stem.conv.weight");
        assert_eq!(tm("bn2.running_mean").unwrap(), "last.norm.running_mean");
        assert_eq!(
            tm("blocks.0.0.conv_pw.weight").unwrap(),
            "blocks.0.layers.1.conv.weight"
        );
        assert_eq!(
            tm("blocks.1.1.conv_dw.weight").unwrap(),
            "blocks.2.layers.1.conv.weight"
        );
        assert_eq!(
            tm("blocks.6.0.bn3.bias").unwrap(),
            "blocks.16.layers.2.norm.bias"
        );
        assert_eq!(tm("classifier.weight").unwrap(), "head.weight");
        assert_eq!(tm("blocks.7.0.bn3.bias"), None);
    }
}
