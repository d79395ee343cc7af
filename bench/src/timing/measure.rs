//! Measuring each kind of case: on Burn's kernels on any backend, and on the vendor libraries
//! and the CPU's direct loop as the job kinds run on them.

use burn::backend::Autodiff;
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::tensor::{
    DType, Distribution, Int, Tensor, TensorData, backend::Backend, module::conv2d,
    ops::ConvOptions,
};
use kiln_kernels::cpu::depthwise::Depthwise;
use kiln_kernels::kinds::mlp::{Mlp, training_loss};
use kiln_kernels::vendor::{cublas, cudnn, openblas};
use kiln_kernels::{Dtype, dtype_name, seeded_values};

use super::SMALL_ITERS_FACTOR;
use super::case::{Case, Work, mlp_widths};
use super::run::{Measured, Settings, sample, time_iterations};

/// Adam's learning rate in the training step (its value does not change the cost).
const LR: f64 = 1e-3;

/// Cast to the case's dtype (tf32 stays f32) and check that the tensor really is in it.
fn cast_to<B: Backend, const D: usize>(
    tensor: Tensor<B, D>,
    dtype: Dtype,
    what: &str,
) -> Result<Tensor<B, D>, String> {
    let tensor = match dtype.burn_dtype() {
        None => tensor,
        Some(low) => tensor.cast(low),
    };
    check_dtype(&tensor, dtype, what)?;
    Ok(tensor)
}

fn check_dtype<B: Backend, const D: usize>(
    tensor: &Tensor<B, D>,
    dtype: Dtype,
    what: &str,
) -> Result<(), String> {
    let want = dtype.burn_dtype().map_or(DType::F32, DType::from);
    if tensor.dtype() == want {
        Ok(())
    } else {
        Err(format!(
            "{what} is {} but the case asks for {}",
            dtype_name(tensor.dtype()),
            dtype.as_str()
        ))
    }
}

/// A matmul case on the device's BLAS (cuBLAS on CUDA device `cuda`, else OpenBLAS), sampled
/// like the Burn cases: operands in place first, warm-up, then one sample per product (between
/// two stream synchronisations on the GPU).
pub(super) fn measure_blas(
    cuda: Option<usize>,
    case: &Case,
    settings: &Settings,
) -> Result<Measured, String> {
    let Work::Matmul { n, dtype, .. } = case.work else {
        return Err(format!("{} is not a matmul", case.name));
    };
    let (samples, note) = match cuda {
        Some(index) => {
            let note = match dtype {
                Dtype::F32 => "cuBLAS, CUBLAS_COMPUTE_32F (true f32)",
                Dtype::Tf32 => "cuBLAS, CUBLAS_COMPUTE_32F_FAST_TF32",
                Dtype::Bf16 => "cuBLAS, bf16 in and out, f32 accumulation",
                Dtype::F16 => "cuBLAS, f16 in and out, f32 accumulation",
            };
            let products = std::cell::RefCell::new(cublas::SquareProducts::new(index, n, dtype)?);
            let samples = sample(
                settings,
                settings.iters,
                || products.borrow().sync(),
                || products.borrow_mut().launch(),
            )?;
            (samples, note)
        }
        None => {
            let a = seeded_values(7, 0, n * n);
            let b = seeded_values(7, 1, n * n);
            let mut c = vec![0.0f32; n * n];
            let samples = sample(
                settings,
                settings.iters,
                || Ok(()),
                || openblas::matmul_into(&a, &b, &mut c, (n, n, n)).map_err(|e| e.message),
            )?;
            (samples, "OpenBLAS cblas_sgemm")
        }
    };
    Ok(Measured {
        samples,
        dtype: dtype.as_str().into(),
        note: Some(note.into()),
    })
}

/// A vector add case on cuBLAS, as `vector_add` jobs run on CUDA: the large case on vectors kept
/// on the device (as the Burn and PyTorch rows time it), the small one a whole job (upload,
/// add, read back) per iteration.
pub(super) fn measure_cublas_add(
    index: usize,
    case: &Case,
    settings: &Settings,
) -> Result<Measured, String> {
    let (samples, note) = match case.work {
        Work::VectorAdd { len, .. } => {
            let sums = std::cell::RefCell::new(cublas::DeviceSums::new(index, len)?);
            let samples = sample(
                settings,
                settings.iters,
                || sums.borrow().sync(),
                || sums.borrow_mut().launch(),
            )?;
            (samples, "cuBLAS cublasSgeam, c = 1·a + 1·b")
        }
        Work::SmallVectorAdd { len, .. } => {
            let (a, b) = small_operands(len);
            let iters = settings.iters.saturating_mul(SMALL_ITERS_FACTOR);
            let samples = sample(
                settings,
                iters,
                || Ok(()),
                || {
                    let c = cublas::vector_add(index, &a, &b).map_err(|e| e.message)?;
                    check_small_sum(&a, &b, &c)?;
                    Ok(c)
                },
            )?;
            (
                samples,
                "per job: upload a and b from host, add on cuBLAS, read c back",
            )
        }
        _ => return Err(format!("{} is not a vector add", case.name)),
    };
    Ok(Measured {
        samples,
        dtype: "f32".into(),
        note: Some(note.into()),
    })
}

/// The small vector add's host vectors (made once, as a job's are before it runs), whose last
/// sum is exact: (len − 1) + (len − 1)/2.
fn small_operands(len: usize) -> (Vec<f32>, Vec<f32>) {
    let a = (0..len).map(|i| i as f32).collect();
    let b = (0..len).map(|i| 0.5 * i as f32).collect();
    (a, b)
}

/// That the small vector add read back its whole output with the right last sum.
fn check_small_sum(a: &[f32], b: &[f32], c: &[f32]) -> Result<(), String> {
    match (a.last(), b.last(), c.last()) {
        (Some(x), Some(y), Some(z)) if c.len() == a.len() && *z == x + y => Ok(()),
        _ => Err("the small vector add read back a wrong sum".into()),
    }
}

/// A depthwise conv2d case on the CPU's direct loop, as a conv2d job filters there: one kernel
/// over every plane of the batch, each sample one call.
pub(super) fn measure_direct(case: &Case, settings: &Settings) -> Result<Measured, String> {
    let Some(shape) = case.work.conv_shape() else {
        return Err(format!("{} is not a conv2d", case.name));
    };
    let [k, _] = shape.kernel;
    let pixels = seeded_values(7, 0, shape.input_len());
    let kernels = [seeded_values(7, 1, k * k)];
    let depthwise = Depthwise {
        planes: shape.batch * shape.channels,
        height: shape.height,
        width: shape.width,
        side: k,
        kernels: &kernels,
    };
    let samples = sample(
        settings,
        settings.iters,
        || Ok(()),
        || Ok(depthwise.run(&pixels)),
    )?;
    Ok(Measured {
        samples,
        dtype: "f32".into(),
        note: Some("kiln's direct depthwise loop, on every core".into()),
    })
}

/// A conv2d case on cuDNN, sampled like the Burn cases: operands on the device first, warm-up
/// (the first launch measures cuDNN's algorithms), then one sample per convolution between two
/// stream synchronisations. The note names the algorithm and math type cuDNN chose.
pub(super) fn measure_cudnn(
    index: usize,
    case: &Case,
    settings: &Settings,
) -> Result<Measured, String> {
    let Some(shape) = case.work.conv_shape() else {
        return Err(format!("{} is not a conv2d", case.name));
    };
    let convolutions =
        std::cell::RefCell::new(cudnn::Convolutions::new(index, shape, case.dtype())?);
    let samples = sample(
        settings,
        settings.iters,
        || convolutions.borrow().sync(),
        || convolutions.borrow_mut().launch(),
    )?;
    let algorithm = convolutions.borrow().algorithm();
    Ok(Measured {
        samples,
        dtype: case.dtype().as_str().into(),
        note: Some(format!(
            "cuDNN, {}",
            algorithm.unwrap_or_else(|| "algorithm unknown".into())
        )),
    })
}

pub(super) fn measure<B: Backend>(
    device: &B::Device,
    case: &Case,
    settings: &Settings,
) -> Result<Measured, String> {
    let iters = settings.iters;
    let measured = |samples, dtype: &str| Measured {
        samples,
        dtype: dtype.into(),
        note: None,
    };
    match &case.work {
        &Work::Matmul { n, dtype, .. } => {
            let a = Tensor::<B, 2>::random([n, n], Distribution::Default, device);
            let b = Tensor::<B, 2>::random([n, n], Distribution::Default, device);
            let a = cast_to(a, dtype, "matmul input a")?;
            let b = cast_to(b, dtype, "matmul input b")?;
            check_dtype(&a.clone().matmul(b.clone()), dtype, "matmul output")?;
            let samples = time_iterations::<B, _>(device, settings, iters, || {
                Ok(a.clone().matmul(b.clone()))
            })?;
            Ok(measured(samples, dtype.as_str()))
        }
        &Work::VectorAdd { len, .. } => {
            let a = Tensor::<B, 1>::random([len], Distribution::Default, device);
            let b = Tensor::<B, 1>::random([len], Distribution::Default, device);
            let samples =
                time_iterations::<B, _>(device, settings, iters, || Ok(a.clone() + b.clone()))?;
            Ok(measured(samples, "f32"))
        }
        &Work::Conv2d { dtype, .. } => {
            let s = case
                .work
                .conv_shape()
                .ok_or_else(|| format!("{} is not a conv2d", case.name))?;
            let samples = burn_conv2d::<B>(device, settings, &s, dtype)?;
            Ok(measured(samples, dtype.as_str()))
        }
        Work::TrainStep {
            batch,
            features,
            hidden,
            classes,
        } => {
            let samples = train_step::<B>(
                device,
                settings,
                iters,
                *batch,
                &mlp_widths(*features, hidden, *classes),
            )?;
            Ok(measured(samples, "f32"))
        }
        &Work::SmallVectorAdd { len, .. } => {
            let samples = burn_small_add::<B>(device, settings, len)?;
            let mut m = measured(samples, "f32");
            m.note = Some("per job: upload a and b from host, add, read c back".into());
            Ok(m)
        }
    }
}

/// Time Burn's convolution of shape `s` in `dtype` on operands made once on the device, after
/// checking the output's dtype and shape.
fn burn_conv2d<B: Backend>(
    device: &B::Device,
    settings: &Settings,
    s: &cudnn::ConvShape,
    dtype: Dtype,
) -> Result<Vec<f64>, String> {
    let x = Tensor::<B, 4>::random(
        [s.batch, s.channels, s.height, s.width],
        Distribution::Default,
        device,
    );
    let w = Tensor::<B, 4>::random(
        [
            s.out_channels,
            s.channels / s.groups,
            s.kernel[0],
            s.kernel[1],
        ],
        Distribution::Uniform(-0.1, 0.1),
        device,
    );
    let x = cast_to(x, dtype, "conv2d input")?;
    let w = cast_to(w, dtype, "conv2d weight")?;
    let options = || ConvOptions::new([1, 1], s.padding, [1, 1], s.groups);
    let first = conv2d(x.clone(), w.clone(), None, options());
    check_dtype(&first, dtype, "conv2d output")?;
    if first.dims() != s.output_dims() {
        return Err(format!(
            "conv2d output has shape {:?}, expected {:?}",
            first.dims(),
            s.output_dims()
        ));
    }
    drop(first);
    time_iterations::<B, _>(device, settings, settings.iters, || {
        Ok(conv2d(x.clone(), w.clone(), None, options()))
    })
}

/// Time whole small jobs on Burn: upload a and b from the host, add, read c back.
fn burn_small_add<B: Backend>(
    device: &B::Device,
    settings: &Settings,
    len: usize,
) -> Result<Vec<f64>, String> {
    let (a, b) = small_operands(len);
    let iters = settings.iters.saturating_mul(SMALL_ITERS_FACTOR);
    time_iterations::<B, _>(device, settings, iters, || {
        let ta = Tensor::<B, 1>::from_data(TensorData::new(a.clone(), [len]), device);
        let tb = Tensor::<B, 1>::from_data(TensorData::new(b.clone(), [len]), device);
        let c = (ta + tb)
            .into_data()
            .into_vec::<f32>()
            .map_err(|e| format!("reading the small vector add back: {e:?}"))?;
        check_small_sum(&a, &b, &c)?;
        Ok(c)
    })
}

/// Time Adam steps of the MLP `widths` on one fixed batch.
fn train_step<B: Backend>(
    device: &B::Device,
    settings: &Settings,
    iters: u32,
    batch: usize,
    widths: &[usize],
) -> Result<Vec<f64>, String> {
    type Ad<B> = Autodiff<B>;
    let (features, classes) = (widths[0], widths[widths.len() - 1]);
    let x = Tensor::<Ad<B>, 2>::random([batch, features], Distribution::Normal(0.0, 1.0), device);
    let labels: Vec<i64> = (0..batch).map(|i| (i % classes) as i64).collect();
    let y = Tensor::<B, 1, Int>::from_data(TensorData::new(labels, [batch]), device);
    // The network the train_mlp kind trains (its initialisation is outside the timed steps).
    let mut model = Some(Mlp::<Ad<B>>::init(widths, 0, device));
    let mut optim = AdamConfig::new().init::<Ad<B>, Mlp<Ad<B>>>();
    time_iterations::<B, _>(device, settings, iters, || {
        let m = model.take().ok_or("the model was lost in a failed step")?;
        let (loss, to_differentiate) = training_loss(m.forward(x.clone()), y.clone());
        let grads = GradientsParams::from_grads(to_differentiate.backward(), &m);
        model = Some(optim.step(LR, m, grads));
        Ok(loss)
    })
}
