//! Picks the device (probing for CUDA once) and runs generic training code on the matching Burn backend.

use super::{DeviceRequest, TrainError};
use burn::backend::cuda::CudaDevice;
use burn::backend::flex::FlexDevice;
use burn::backend::{Autodiff, Cuda, Flex};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::Tensor;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::OnceLock;

/// Training backend on the CPU.
pub type CpuBackend = Autodiff<Flex>;
/// Training backend on an NVIDIA GPU.
pub type CudaBackend = Autodiff<Cuda>;

/// The device a run will use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chosen {
    Cpu,
    /// CUDA device 0.
    Cuda,
}

impl Chosen {
    /// Name reported in `TrainEvent::DeviceChosen`.
    pub fn name(self) -> &'static str {
        match self {
            Chosen::Cpu => "cpu",
            Chosen::Cuda => "cuda:0",
        }
    }
}

/// Resolves a request: `Auto` takes CUDA when the probe succeeds, else the
/// CPU; `Cuda` without a working GPU is an error.
pub fn resolve(request: DeviceRequest) -> Result<Chosen, TrainError> {
    match request {
        DeviceRequest::Cpu => Ok(Chosen::Cpu),
        DeviceRequest::Auto => Ok(if cuda_probe().is_ok() {
            Chosen::Cuda
        } else {
            Chosen::Cpu
        }),
        DeviceRequest::Cuda => match cuda_probe() {
            Ok(()) => Ok(Chosen::Cuda),
            Err(why) => Err(TrainError::Device(format!(
                "CUDA was requested (PRETEXT_DEVICE=cuda) but no usable GPU was found: {why}"
            ))),
        },
    }
}

/// Whether a CUDA device works, probed once per process.
///
/// cubecl panics (instead of returning an error) when the driver library or
/// a GPU is missing, so the probe runs on its own thread under
/// `catch_unwind`; a machine without the NVIDIA driver nodes is ruled out
/// first so the common CPU-only case prints no panic message.
pub fn cuda_probe() -> Result<(), String> {
    static PROBE: OnceLock<Result<(), String>> = OnceLock::new();
    PROBE
        .get_or_init(|| {
            if !Path::new("/dev/nvidiactl").exists() && !Path::new("/proc/driver/nvidia").exists() {
                return Err(
                    "no NVIDIA driver (/dev/nvidiactl and /proc/driver/nvidia are absent)".into(),
                );
            }
            let probe = std::thread::Builder::new()
                .name("cuda-probe".into())
                .spawn(|| {
                    catch_unwind(AssertUnwindSafe(|| {
                        let device = CudaDevice::default();
                        let t = Tensor::<Cuda, 1>::from_floats([1.0, 2.0], &device);
                        t.sum().into_data()
                    }))
                });
            match probe.map_err(|e| e.to_string())?.join() {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(panic)) | Err(panic) => Err(panic_text(&panic)),
            }
        })
        .clone()
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "the CUDA runtime panicked".to_string()
    }
}

/// Generic work to run on whichever backend was chosen (Rust has no generic
/// closures, hence a trait).
pub trait BackendTask {
    type Output;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output;
}

/// Runs `task` on the chosen backend. This is the only place the two
/// backends are instantiated.
pub fn dispatch<T: BackendTask>(chosen: Chosen, task: T) -> T::Output {
    match chosen {
        Chosen::Cpu => task.run::<CpuBackend>(FlexDevice),
        Chosen::Cuda => task.run::<CudaBackend>(CudaDevice::default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_is_always_available() {
        assert_eq!(resolve(DeviceRequest::Cpu).unwrap(), Chosen::Cpu);
    }

    #[test]
    fn auto_and_cuda_agree_with_the_probe() {
        let auto = resolve(DeviceRequest::Auto).unwrap();
        match cuda_probe() {
            Ok(()) => {
                assert_eq!(auto, Chosen::Cuda);
                assert_eq!(resolve(DeviceRequest::Cuda).unwrap(), Chosen::Cuda);
            }
            Err(_) => {
                assert_eq!(auto, Chosen::Cpu);
                let err = resolve(DeviceRequest::Cuda).unwrap_err();
                assert!(
                    matches!(&err, TrainError::Device(m) if m.contains("no usable GPU")),
                    "{err}"
                );
            }
        }
    }
}
