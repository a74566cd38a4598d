//! GPU devices through Burn's wgpu backend (the `gpu` feature): which adapters this machine has,
//! and the Burn device for `gpu`, `gpu:N`, `wgpu-cpu` and `auto`.
//!
//! The adapters are listed as Burn's wgpu runtime lists them: on the first graphics API of
//! Vulkan, DX12, OpenGL (Metal on macOS) that has a hardware GPU, each kind counted from 0.
//! Software adapters (lavapipe, llvmpipe, WARP) are never a `gpu`; `wgpu-cpu` names one.

use std::future::Future;
use std::task::{Context, Poll, Waker};

use anyhow::{Result, bail};
use burn::tensor::wgpu::wgpu;
use burn::tensor::{Device, DeviceKind};

/// One adapter wgpu reaches.
struct Adapter {
    info: wgpu::AdapterInfo,
}

impl Adapter {
    fn is_software(&self) -> bool {
        self.info.device_type == wgpu::DeviceType::Cpu
    }

    /// Discrete GPUs first, then integrated, then virtual.
    fn rank(&self) -> Option<u8> {
        match self.info.device_type {
            wgpu::DeviceType::DiscreteGpu => Some(0),
            wgpu::DeviceType::IntegratedGpu => Some(1),
            wgpu::DeviceType::VirtualGpu => Some(2),
            _ => None,
        }
    }

    fn describe(&self) -> String {
        format!("{}, {:?}", self.info.name, self.info.backend)
    }
}

/// The graphics APIs Burn's wgpu runtime tries, best first.
fn apis() -> Vec<wgpu::Backend> {
    if cfg!(target_os = "macos") {
        vec![wgpu::Backend::Metal]
    } else {
        vec![
            wgpu::Backend::Vulkan,
            wgpu::Backend::Dx12,
            wgpu::Backend::Gl,
        ]
    }
}

/// The adapters `api` has on this machine.
fn probe(api: wgpu::Backend) -> Vec<Adapter> {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends: api.into(),
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    });
    block_on(instance.enumerate_adapters(api.into()))
        .iter()
        .map(|a| Adapter { info: a.get_info() })
        .collect()
}

/// The hardware GPUs, in `gpu:N` order, with the Burn device kind of each: those of the first
/// API that has any (as Burn's runtime settles on it), each kind counted on its own.
fn hardware() -> Vec<(DeviceKind, Adapter)> {
    for api in apis() {
        let adapters: Vec<Adapter> = probe(api)
            .into_iter()
            .filter(|a| a.rank().is_some())
            .collect();
        if adapters.is_empty() {
            continue;
        }
        let mut counts = [0usize; 3];
        let mut found: Vec<(u8, DeviceKind, Adapter)> = adapters
            .into_iter()
            .map(|a| {
                let rank = a.rank().unwrap_or(2);
                let i = counts[rank as usize];
                counts[rank as usize] += 1;
                let kind = match rank {
                    0 => DeviceKind::DiscreteGpu(i),
                    1 => DeviceKind::IntegratedGpu(i),
                    _ => DeviceKind::VirtualGpu(i),
                };
                (rank, kind, a)
            })
            .collect();
        found.sort_by_key(|(rank, _, _)| *rank);
        return found.into_iter().map(|(_, k, a)| (k, a)).collect();
    }
    Vec::new()
}

/// A software adapter (lavapipe), if any API has one.
fn software() -> Option<Adapter> {
    apis()
        .into_iter()
        .find_map(|api| probe(api).into_iter().find(Adapter::is_software))
}

/// `auto`: the first hardware GPU (the device and its name), or why there is none.
pub fn auto() -> Result<(Device, String)> {
    let Some((kind, adapter)) = hardware().into_iter().next() else {
        bail!("no hardware GPU found through wgpu (Vulkan, DX12, OpenGL or Metal)");
    };
    Ok((
        Device::wgpu(kind),
        format!("gpu:0 ({})", adapter.describe()),
    ))
}

/// `gpu:N`: the device and its name; an error says what this machine has instead.
pub fn gpu(i: usize) -> Result<(Device, String)> {
    let mut all = hardware();
    if i >= all.len() {
        let have = match all.len() {
            0 => "no hardware GPU was found through wgpu (Vulkan, DX12, OpenGL or Metal): check \
                  the GPU driver (its Vulkan ICD), or use --device cpu"
                .to_string(),
            n => format!(
                "this machine has {n} GPU(s): {}",
                all.iter()
                    .enumerate()
                    .map(|(k, (_, a))| format!("gpu:{k} ({})", a.describe()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        bail!("--device gpu:{i}: {have}");
    }
    let (kind, adapter) = all.swap_remove(i);
    Ok((
        Device::wgpu(kind),
        format!("gpu:{i} ({})", adapter.describe()),
    ))
}

/// `wgpu-cpu`: wgpu's software adapter and its name; an error says how to install one.
pub fn wgpu_cpu() -> Result<(Device, String)> {
    let Some(adapter) = software() else {
        bail!(
            "--device wgpu-cpu: wgpu found no software adapter; install Mesa's lavapipe \
             (Debian/Ubuntu: apt-get install mesa-vulkan-drivers)"
        );
    };
    Ok((
        Device::wgpu(DeviceKind::Cpu),
        format!("wgpu-cpu ({})", adapter.describe()),
    ))
}

/// Runs a future that wgpu's native backends complete at once (adapter enumeration).
fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = future.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::yield_now();
    }
}
