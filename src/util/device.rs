//! The one place that picks where tensors live. flora runs on Burn's pure-Rust Flex CPU backend;
//! a binary built with the `gpu` feature can also run on a GPU through Burn's wgpu backend
//! ([`super::gpu`]). A command picks the device once ([`select`]); everything after asks
//! [`inference`] or [`training`].

use std::fmt;
use std::str::FromStr;
use std::sync::RwLock;

use anyhow::{Result, bail};
use burn::tensor::Device;
use serde::{Deserialize, Serialize};

/// The values `--device` and `train.device` take, for messages.
pub const CHOICES: &str = "auto, cpu, gpu, gpu:N (N = 0, 1, ...), wgpu-cpu";

/// Whether this binary was built with the `gpu` feature.
pub const GPU_BUILT: bool = cfg!(feature = "gpu");

/// The error for a GPU device asked of a binary built without the `gpu` feature.
pub const NOT_BUILT: &str = "this flora was built without the `gpu` feature: build one with it \
     (`cargo install --path . --features gpu`, or `cargo build --release --features gpu`), or \
     use --device cpu";

/// Where to run, as asked (`--device`, `train.device`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceChoice {
    /// A hardware GPU when this binary has the `gpu` feature and the machine has one, else the
    /// CPU.
    #[default]
    Auto,
    /// The CPU (Flex backend, with flora's fused kernels).
    Cpu,
    /// The hardware GPU of this index (`gpu` is `gpu:0`), discrete ones first.
    Gpu(usize),
    /// wgpu's software adapter (Mesa's lavapipe): the GPU code path on the CPU, for tests.
    /// Never chosen by `auto`.
    WgpuCpu,
}

impl FromStr for DeviceChoice {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let t = s.trim().to_ascii_lowercase();
        Ok(match t.as_str() {
            "auto" => Self::Auto,
            "cpu" => Self::Cpu,
            "gpu" => Self::Gpu(0),
            "wgpu-cpu" => Self::WgpuCpu,
            _ => match t.strip_prefix("gpu:").map(str::parse::<usize>) {
                Some(Ok(i)) => Self::Gpu(i),
                _ => bail!("device {s:?} is not understood: use one of {CHOICES}"),
            },
        })
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Cpu => f.write_str("cpu"),
            Self::Gpu(i) => write!(f, "gpu:{i}"),
            Self::WgpuCpu => f.write_str("wgpu-cpu"),
        }
    }
}

impl TryFrom<String> for DeviceChoice {
    type Error = anyhow::Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<DeviceChoice> for String {
    fn from(c: DeviceChoice) -> String {
        c.to_string()
    }
}

/// A device picked by [`select`]: the Burn device (no autodiff) and what it is.
#[derive(Debug, Clone)]
pub struct Selected {
    pub choice: DeviceChoice,
    pub device: Device,
    /// `cpu`, `gpu:0 (NVIDIA ..., Vulkan)`, `wgpu-cpu (llvmpipe ..., Vulkan)`.
    pub name: String,
    /// Why `auto` chose what it chose.
    pub reason: Option<String>,
}

impl Selected {
    fn cpu(choice: DeviceChoice, reason: Option<String>) -> Self {
        Self {
            choice,
            device: Device::flex(),
            name: "cpu".into(),
            reason,
        }
    }

    /// The line printed when a command starts: `device: cpu (auto: ...)`.
    pub fn describe(&self) -> String {
        match &self.reason {
            Some(r) => format!("device: {} (auto: {r})", self.name),
            None => format!("device: {}", self.name),
        }
    }

    /// Whether this is the CPU (Flex), where flora's fused kernels run.
    pub fn is_cpu(&self) -> bool {
        on_cpu(&self.device)
    }
}

static SELECTED: RwLock<Option<Selected>> = RwLock::new(None);

/// Resolves `choice` to a device of this binary and machine, makes it the process's device and
/// returns it; an error says what to do when the binary or the machine lacks it.
pub fn select(choice: DeviceChoice) -> Result<Selected> {
    let selected = resolve(choice)?;
    *SELECTED.write().unwrap_or_else(|e| e.into_inner()) = Some(selected.clone());
    Ok(selected)
}

fn resolve(choice: DeviceChoice) -> Result<Selected> {
    if choice == DeviceChoice::Cpu {
        return Ok(Selected::cpu(choice, None));
    }
    #[cfg(not(feature = "gpu"))]
    {
        if choice == DeviceChoice::Auto {
            let why = "this flora was built without the `gpu` feature";
            return Ok(Selected::cpu(choice, Some(why.into())));
        }
        bail!("--device {choice}: {NOT_BUILT}")
    }
    #[cfg(feature = "gpu")]
    {
        let (device, name) = match choice {
            DeviceChoice::Auto => match super::gpu::auto() {
                Ok(found) => found,
                Err(why) => return Ok(Selected::cpu(choice, Some(format!("{why}")))),
            },
            DeviceChoice::Gpu(i) => super::gpu::gpu(i)?,
            DeviceChoice::WgpuCpu | DeviceChoice::Cpu => super::gpu::wgpu_cpu()?,
        };
        Ok(Selected {
            choice,
            device,
            name,
            reason: (choice == DeviceChoice::Auto).then(|| "a hardware GPU was found".into()),
        })
    }
}

/// The process's device, as [`select`]ed (the CPU when nothing was).
pub fn selected() -> Selected {
    SELECTED
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .unwrap_or_else(|| Selected::cpu(DeviceChoice::Cpu, None))
}

/// The device for inference (no autodiff).
pub fn inference() -> Device {
    match &*SELECTED.read().unwrap_or_else(|e| e.into_inner()) {
        Some(s) => s.device.clone(),
        None => Device::flex(),
    }
}

/// The device for training: the inference device with autodiff on.
pub fn training() -> Device {
    inference().autodiff()
}

/// The CPU training device, where a model is initialised before it moves to a GPU (so that a
/// GPU run starts from the weights a CPU run with the same seed starts from).
pub fn cpu_training() -> Device {
    Device::flex().autodiff()
}

/// Whether `device` is the CPU (Flex backend, with or without autodiff).
pub fn on_cpu(device: &Device) -> bool {
    matches!(
        device.clone().inner().as_dispatch(),
        burn::backend::DispatchDevice::Flex(_)
    )
}

/// Sizes the shared CPU thread pool (decoding and the backend); 0 means one thread per core.
/// Only the first call has an effect.
pub fn set_threads(threads: usize) {
    if threads > 0 {
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_parse_and_print_back() {
        for (text, choice) in [
            ("auto", DeviceChoice::Auto),
            ("cpu", DeviceChoice::Cpu),
            ("gpu", DeviceChoice::Gpu(0)),
            ("gpu:2", DeviceChoice::Gpu(2)),
            ("WGPU-CPU", DeviceChoice::WgpuCpu),
        ] {
            assert_eq!(text.parse::<DeviceChoice>().unwrap(), choice);
            assert_eq!(choice.to_string().parse::<DeviceChoice>().unwrap(), choice);
        }
        for bad in ["cuda", "gpu:", "gpu:x", "gpu:-1", ""] {
            let err = bad.parse::<DeviceChoice>().unwrap_err().to_string();
            assert!(err.contains(CHOICES), "{bad}: {err}");
        }
    }

    #[test]
    fn cpu_is_always_available() {
        let s = resolve(DeviceChoice::Cpu).unwrap();
        assert!(s.is_cpu());
        assert_eq!(s.describe(), "device: cpu");
    }

    #[cfg(not(feature = "gpu"))]
    #[test]
    fn without_the_feature_auto_is_the_cpu_and_a_gpu_is_an_error() {
        let s = resolve(DeviceChoice::Auto).unwrap();
        assert!(s.is_cpu());
        assert!(
            s.describe().contains("without the `gpu` feature"),
            "{}",
            s.describe()
        );
        for c in [DeviceChoice::Gpu(0), DeviceChoice::WgpuCpu] {
            let err = resolve(c).unwrap_err().to_string();
            assert!(err.contains("--features gpu"), "{err}");
        }
    }
}
