//! Which engine this worker's `matmul` and `conv2d` jobs run on, chosen once at start: the
//! device's libraries (cuBLAS, OpenBLAS, cuDNN) where they work, else Burn's kernels.

use kiln_kernels::ComputeDevice;

/// What this worker's `conv2d` jobs run on: on CUDA, cuDNN when asked for and it works (a
/// small dense and a small depthwise convolution check it against the host), else Burn's
/// kernels, saying why; on the CPU, the direct depthwise loop (plain Rust, nothing to check) or
/// Burn, as asked.
pub(crate) async fn choose_conv_engine(
    device: ComputeDevice,
    wanted: kiln_kernels::ConvEngine,
) -> kiln_kernels::ConvEngine {
    use kiln_kernels::ConvEngine;
    if wanted == ConvEngine::Burn {
        tracing::info!(engine = "burn", "conv2d engine (--conv2d-engine burn)");
        return ConvEngine::Burn;
    }
    let ComputeDevice::Cuda(index) = device else {
        tracing::info!(engine = "direct", "conv2d engine");
        return ConvEngine::Native;
    };
    let checked = tokio::task::spawn_blocking(move || kiln_kernels::vendor::cudnn::probe(index))
        .await
        .unwrap_or_else(|e| Err(format!("the check itself failed: {e}")));
    match checked {
        Ok(()) => {
            tracing::info!(engine = "cudnn", library = %format!("cuDNN on cuda:{index}"), "conv2d engine");
            ConvEngine::Native
        }
        Err(reason) => {
            tracing::warn!(
                "cuDNN is not usable, so conv2d jobs run on Burn's kernels (f32 at TF32-like precision): {reason}"
            );
            ConvEngine::Burn
        }
    }
}

/// What this worker's `matmul` jobs run on: the device's BLAS when asked for and it works (a
/// tiny product checks it), else Burn's kernels, saying why.
pub(crate) async fn choose_matmul_engine(
    device: ComputeDevice,
    wanted: kiln_kernels::MatmulEngine,
) -> kiln_kernels::MatmulEngine {
    use kiln_kernels::MatmulEngine;
    if wanted == MatmulEngine::Burn {
        tracing::info!(engine = "burn", "matmul engine (--matmul-engine burn)");
        return MatmulEngine::Burn;
    }
    let probed = device.clone();
    let checked = tokio::task::spawn_blocking(move || match probed {
        ComputeDevice::Cuda(index) => {
            kiln_kernels::vendor::cublas::probe(index).map(|()| format!("cuBLAS on cuda:{index}"))
        }
        ComputeDevice::Cpu => kiln_kernels::vendor::openblas::probe(),
    })
    .await
    .unwrap_or_else(|e| Err(format!("the check itself failed: {e}")));
    match checked {
        Ok(library) => {
            // Named as results and heartbeats name it (`--matmul-engine blas` chose it).
            let engine = match device {
                ComputeDevice::Cuda(_) => "cublas",
                ComputeDevice::Cpu => "openblas",
            };
            tracing::info!(engine, %library, "matmul engine");
            MatmulEngine::Blas
        }
        Err(reason) => {
            match device {
                ComputeDevice::Cuda(_) => tracing::warn!(
                    "cuBLAS is not usable, so matmul and vector_add jobs run on Burn's kernels (matmul's f32 at TF32-like precision): {reason}"
                ),
                ComputeDevice::Cpu => tracing::info!(
                    "matmul jobs run on burn-ndarray, about half of OpenBLAS's speed: {reason}"
                ),
            }
            MatmulEngine::Burn
        }
    }
}
