//! Choosing the burn device from a name (`--device`, `KILN_DEVICE`).

use burn::prelude::*;

use crate::error::{Error, Result};

/// `cpu` (or `flex`) → burn's pure-Rust flex backend; `cuda` / `cuda:N` → CUDA device N (with the
/// `cuda` feature); `wgpu` → the best wgpu adapter, `wgpu:cpu` → a CPU adapter such as Mesa's
/// lavapipe (with the `wgpu` feature). Library code never picks a device itself; binaries call
/// this once.
///
/// # Errors
/// [`Error::Device`] for an unknown name, or `cuda` / `wgpu` without its feature.
pub fn device_from_name(name: &str) -> Result<Device> {
    let n = name.trim().to_ascii_lowercase();
    match n.as_str() {
        "cpu" | "flex" => Ok(Device::flex()),
        #[cfg(feature = "cuda-no-fusion")]
        s if s == "cuda" || s.starts_with("cuda:") => {
            let index = s
                .strip_prefix("cuda:")
                .map_or(Ok(0), str::parse::<usize>)
                .map_err(|_| Error::Device {
                    name: name.to_owned(),
                })?;
            Ok(Device::cuda(index))
        }
        #[cfg(feature = "wgpu")]
        "wgpu" => Ok(Device::wgpu(burn::tensor::DeviceKind::DefaultDevice)),
        #[cfg(feature = "wgpu")]
        "wgpu:cpu" => Ok(Device::wgpu(burn::tensor::DeviceKind::Cpu)),
        _ => Err(Error::Device {
            name: name.to_owned(),
        }),
    }
}

/// The device named by `KILN_DEVICE`, else the CPU.
///
/// # Errors
/// As [`device_from_name`].
pub fn device_from_env() -> Result<Device> {
    match std::env::var("KILN_DEVICE") {
        Ok(name) if !name.trim().is_empty() => device_from_name(&name),
        _ => Ok(Device::flex()),
    }
}
