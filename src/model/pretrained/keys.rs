//! The key names of the two published MobileNetV2 layouts, and the path in flora's
//! [`MobileNetV2`](crate::model::MobileNetV2) each file key loads into.

use crate::model::mobilenet::{NUM_BLOCKS, SETTINGS};

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
    pub(super) fn detect<'a>(keys: impl IntoIterator<Item = &'a String>) -> Option<Self> {
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

/// The [`MobileNetV2`](crate::model::MobileNetV2) path of a file key, or `None` for keys that are not loaded (BatchNorm's
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
pub(super) fn block_expand(block: usize) -> usize {
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
