//! `conv2d` against a direct 2D convolution with zero padding.

use kiln_kernels::{find, seeded_values};
use kiln_proto::{ErrorKind, Limits};
use serde_json::{Value, json};

use crate::support::{assert_close, error_kind, floats, run};

/// Cross-correlation of each `h`×`w` plane in `planes` with the square `kernel`, zero "same"
/// padding, accumulated in f64.
fn reference(planes: &[f32], h: usize, w: usize, kernel: &[Vec<f64>]) -> Vec<f64> {
    let k = kernel.len();
    let r = (k / 2) as isize;
    let mut out = Vec::with_capacity(planes.len());
    for plane in planes.chunks(h * w) {
        for y in 0..h as isize {
            for x in 0..w as isize {
                let mut acc = 0.0;
                for (i, row) in kernel.iter().enumerate() {
                    for (j, &kv) in row.iter().enumerate() {
                        let (yy, xx) = (y + i as isize - r, x + j as isize - r);
                        if (0..h as isize).contains(&yy) && (0..w as isize).contains(&xx) {
                            acc += kv * plane[(yy * w as isize + xx) as usize] as f64;
                        }
                    }
                }
                out.push(acc);
            }
        }
    }
    out
}

/// The named filters, written out independently of the kernel's code.
pub(crate) fn named(filter: &str, planes: &[f32], h: usize, w: usize) -> Vec<f64> {
    let sobel_x = vec![
        vec![-1.0, 0.0, 1.0],
        vec![-2.0, 0.0, 2.0],
        vec![-1.0, 0.0, 1.0],
    ];
    match filter {
        "gaussian" => {
            let g = |d: i32| (-(d * d) as f64 / 2.0).exp();
            let mut kernel: Vec<Vec<f64>> = (-2..=2)
                .map(|y| (-2..=2).map(|x| g(x) * g(y)).collect())
                .collect();
            let sum: f64 = kernel.iter().flatten().sum();
            kernel.iter_mut().flatten().for_each(|v| *v /= sum);
            reference(planes, h, w, &kernel)
        }
        "sobel" => {
            let sobel_y: Vec<Vec<f64>> = (0..3)
                .map(|i| (0..3).map(|j| sobel_x[j][i]).collect())
                .collect();
            let gx = reference(planes, h, w, &sobel_x);
            let gy = reference(planes, h, w, &sobel_y);
            gx.iter()
                .zip(&gy)
                .map(|(x, y)| (x * x + y * y).sqrt())
                .collect()
        }
        "sharpen" => reference(
            planes,
            h,
            w,
            &[
                vec![0.0, -1.0, 0.0],
                vec![-1.0, 5.0, -1.0],
                vec![0.0, -1.0, 0.0],
            ],
        ),
        "box" => reference(planes, h, w, &vec![vec![1.0 / 9.0; 3]; 3]),
        other => panic!("no reference for {other}"),
    }
}

/// The pixels of a generated batch: the seed's values mapped to [0, 1).
pub(crate) fn generated(seed: u64, n: usize) -> Vec<f32> {
    seeded_values(seed, 0, n)
        .into_iter()
        .map(|v| (v + 1.0) / 2.0)
        .collect()
}

// f32 on the CPU: at most 25 products of pixels in [0, 1) with weights up to 5, each
// rounded at 2⁻²⁴ relative: 1e-5 relative to (1 + |value|) is a wide margin.
const F32_TOL: f64 = 1e-5;

#[test]
fn box_filter_on_a_small_image_is_exact() {
    let ones = json!([[[1, 1, 1], [1, 1, 1], [1, 1, 1]]]);
    let out = run("conv2d", json!({"image": ones, "filter": "box"}), 0);
    assert_eq!(out["shape"], json!([1, 1, 3, 3]));
    assert_eq!(out["filter"], "box");
    // Zero padding: a corner sees 4 of 9 pixels, an edge 6, the centre 9.
    let expected = [4.0, 6.0, 4.0, 6.0, 9.0, 6.0, 4.0, 6.0, 4.0].map(|v| v / 9.0);
    assert_close(&floats(&out["image"]), &expected, 1e-6, "box on ones");
    // A CPU worker convolves on its direct loop in f32, and says so.
    assert_eq!(out["engine"], "direct");
    assert_eq!(out["dtype"], "f32");
}

#[test]
fn gpu_dtypes_are_refused_on_the_cpu_naming_the_way_out() {
    for dtype in ["tf32", "bf16", "f16"] {
        let e = crate::support::run_with(
            "conv2d",
            json!({"height": 8, "width": 8, "dtype": dtype}),
            0,
            &kiln_kernels::NoCheckpoint,
        )
        .unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidInput);
        assert_eq!(
            e.message,
            format!("dtype {dtype} needs a GPU worker; submit to jobs.gpu.conv2d or use f32")
        );
    }
    let out = run(
        "conv2d",
        json!({"height": 8, "width": 8, "dtype": "f32"}),
        0,
    );
    assert_eq!(out["dtype"], "f32");
    assert_eq!(
        error_kind("conv2d", json!({"dtype": "f64"})),
        ErrorKind::InvalidInput
    );
}

/// The host reference the cuDNN start-up check compares with is the convolution jobs compute:
/// depthwise here (the job's own shape) and dense against Burn's convolution, on integers,
/// where every result is exact.
#[test]
fn the_cudnn_reference_is_the_convolution_jobs_compute() {
    use burn::tensor::{Tensor, TensorData, module::conv2d, ops::ConvOptions};
    use kiln_kernels::CpuBackend;
    use kiln_kernels::vendor::cudnn::{ConvShape, conv2d_reference, probe_cases};

    let image = json!([
        [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]],
        [[0, -1, 0, 2], [3, 0, 1, 0], [2, 2, 0, -3]]
    ]);
    let kernel = [[0.0f32, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]];
    let out = run("conv2d", json!({"image": image, "kernel": kernel}), 0);
    let depthwise = ConvShape {
        batch: 1,
        channels: 2,
        height: 3,
        width: 4,
        out_channels: 2,
        kernel: [3, 3],
        padding: [1, 1],
        groups: 2,
    };
    let weights: Vec<f32> = [kernel.concat(), kernel.concat()].concat();
    assert_eq!(
        floats(&out["image"]),
        conv2d_reference(&floats(&image), &weights, &depthwise)
    );

    // The start-up check's convolutions (dense 3x3 and depthwise 5x5) against Burn's.
    let device = Default::default();
    let cases = probe_cases();
    assert_eq!(cases.len(), 2);
    for (shape, x, w) in cases {
        let [o, i, kh, kw] = [
            shape.out_channels,
            shape.channels / shape.groups,
            shape.kernel[0],
            shape.kernel[1],
        ];
        let burn = conv2d(
            Tensor::<CpuBackend, 4>::from_data(
                TensorData::new(
                    x.clone(),
                    [shape.batch, shape.channels, shape.height, shape.width],
                ),
                &device,
            ),
            Tensor::<CpuBackend, 4>::from_data(TensorData::new(w.clone(), [o, i, kh, kw]), &device),
            None,
            ConvOptions::new([1, 1], shape.padding, [1, 1], shape.groups),
        );
        assert_eq!(burn.dims(), shape.output_dims());
        let burn = burn.into_data().into_vec::<f32>().unwrap();
        assert_eq!(burn, conv2d_reference(&x, &w, &shape), "{shape:?}");
    }
}

#[test]
fn user_kernels_apply_as_cross_correlation() {
    let image = json!([[[1, 2, 3], [4, 5, 6]], [[-1, 0, 1], [7, 8, 9]]]);
    // Identity and scaling.
    let out = run(
        "conv2d",
        json!({"image": image, "kernel": [[0, 0, 0], [0, 1, 0], [0, 0, 0]]}),
        0,
    );
    assert_eq!(
        out["image"],
        json!([
            [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]],
            [[-1.0, 0.0, 1.0], [7.0, 8.0, 9.0]]
        ])
    );
    assert_eq!(out["filter"], "kernel");
    let out = run("conv2d", json!({"image": image, "kernel": [[2]]}), 0);
    assert_eq!(
        out["image"],
        json!([
            [[2.0, 4.0, 6.0], [8.0, 10.0, 12.0]],
            [[-2.0, 0.0, 2.0], [14.0, 16.0, 18.0]]
        ])
    );
    // Not flipped: a 1 right of the centre reads the pixel to the right, output(y, x) =
    // input(y, x + 1), zero past the edge.
    let out = run(
        "conv2d",
        json!({"image": image, "kernel": [[0, 0, 0], [0, 0, 1], [0, 0, 0]]}),
        0,
    );
    assert_eq!(
        out["image"],
        json!([
            [[2.0, 3.0, 0.0], [5.0, 6.0, 0.0]],
            [[0.0, 1.0, 0.0], [8.0, 9.0, 0.0]]
        ])
    );
}

#[test]
fn named_filters_match_reference_on_generated_images() {
    let (c, h, w) = (3, 13, 17);
    let pixels = generated(4, c * h * w);
    for filter in ["gaussian", "sobel", "sharpen", "box"] {
        let out = run(
            "conv2d",
            json!({"channels": c, "height": h, "width": w, "filter": filter}),
            4,
        );
        assert_eq!(out["shape"], json!([1, c, h, w]));
        assert_eq!(out["filter"], filter);
        assert!(
            out.get("image").is_none(),
            "generated outputs are summarised"
        );
        // The same pixels sent inline come back inline, with the same summary.
        let image: Vec<Vec<Vec<f32>>> = pixels
            .chunks(h * w)
            .map(|plane| plane.chunks(w).map(<[f32]>::to_vec).collect())
            .collect();
        let inline = run("conv2d", json!({"image": image, "filter": filter}), 4);
        assert_eq!(
            inline["summary"], out["summary"],
            "{filter}: same seed, same image"
        );
        assert_close(
            &floats(&inline["image"]),
            &named(filter, &pixels, h, w),
            F32_TOL,
            filter,
        );
    }
}

#[test]
fn batches_are_summarised_and_match_reference() {
    let (b, c, h, w) = (2, 2, 9, 11);
    let pixels = generated(8, b * c * h * w);
    let out = run(
        "conv2d",
        json!({"batch": b, "channels": c, "height": h, "width": w, "filter": "sobel"}),
        8,
    );
    assert!(out.get("image").is_none(), "batches are never inline");
    let expected = named("sobel", &pixels, h, w);
    let checksum: f64 = expected.iter().sum();
    // 396 values each within ~1e-6.
    assert!((out["summary"]["checksum"].as_f64().unwrap() - checksum).abs() < 1e-3);
}

#[test]
fn kernel_larger_than_the_image_keeps_its_shape() {
    let image = json!([[[0.5, 1.0], [0.25, 0.0]]]);
    let out = run("conv2d", json!({"image": image, "filter": "gaussian"}), 0);
    assert_eq!(out["shape"], json!([1, 1, 2, 2]));
    let expected = named("gaussian", &[0.5, 1.0, 0.25, 0.0], 2, 2);
    assert_close(
        &floats(&out["image"]),
        &expected,
        F32_TOL,
        "gaussian on 2x2",
    );
}

#[test]
fn defaults_are_a_256_square_rgb_image_and_gaussian() {
    let plan = find("conv2d")
        .unwrap()
        .check_params(json!({}), &Limits::default())
        .unwrap();
    let pixels = 3 * 256 * 256;
    assert_eq!(plan.flops, 2.0 * pixels as f64 * 25.0);
    assert_eq!(plan.elements, 2 * pixels + 3 * 25);
    let sobel = find("conv2d")
        .unwrap()
        .check_params(json!({"filter": "sobel"}), &Limits::default())
        .unwrap();
    assert_eq!(sobel.flops, 2.0 * pixels as f64 * 9.0 * 2.0);

    let out = run("conv2d", json!({}), 0);
    assert_eq!(out["shape"], json!([1, 3, 256, 256]));
    assert_eq!(out["filter"], "gaussian");
    assert!(
        out.get("image").is_none(),
        "3x256x256 is over the inline limit"
    );
    // A normalised blur of values in [0, 1) stays in [0, 1).
    let s = &out["summary"];
    assert!(
        s["min"].as_f64().unwrap() >= 0.0 && s["max"].as_f64().unwrap() < 1.0,
        "{s}"
    );
}

#[test]
fn sizes_that_agree_with_the_image_are_accepted() {
    let image = json!([[[1, 2]]]);
    let out = run(
        "conv2d",
        json!({"image": image, "channels": 1, "width": 2, "filter": "box"}),
        0,
    );
    assert_eq!(out["shape"], json!([1, 1, 1, 2]));
}

#[test]
fn bad_params_are_invalid_input() {
    let image: Value = json!([[[1, 2], [3, 4]]]);
    for params in [
        json!({"filter": "emboss"}),
        json!({"filter": "Sobel"}),
        json!({"filter": "box", "kernel": [[1]]}),
        json!({"kernel": [[1, 1], [1, 1]]}), // even side
        json!({"kernel": []}),
        json!({"kernel": [[1, 2, 3]]}), // not square
        json!({"kernel": [[1, 2, 3], [1, 2], [1, 2, 3]]}), // ragged
        json!({"kernel": vec![vec![0.0; 33]; 33]}), // over 31
        json!({"image": [], "filter": "box"}),
        json!({"image": [[]]}),
        json!({"image": [[[1, 2], [3]]]}), // ragged row
        json!({"image": [[[1, 2], [3, 4]], [[1, 2]]]}), // ragged channel
        json!({"image": image, "channels": 3}), // disagrees with the image
        json!({"image": image, "batch": 2}),
        json!({"channels": 0}),
        json!({"height": 0}),
        json!({"size": 3}), // unknown field
    ] {
        assert_eq!(
            error_kind("conv2d", params.clone()),
            ErrorKind::InvalidInput,
            "{params}"
        );
    }
}

#[test]
fn huge_sizes_are_too_large_not_a_crash() {
    for params in [
        json!({"height": 100_000, "width": 100_000}),
        json!({"batch": u64::MAX, "channels": u64::MAX}),
        json!({"batch": 1u64 << 40, "channels": 1u64 << 40, "filter": "sobel"}),
        json!({"channels": u64::MAX, "height": 1, "width": 1}),
    ] {
        assert_eq!(
            error_kind("conv2d", params.clone()),
            ErrorKind::TooLarge,
            "{params}"
        );
    }
}

#[test]
fn non_finite_kernel_values_are_invalid_input() {
    use kiln_kernels::Kernel;
    use kiln_kernels::kinds::conv2d::{Conv2d, Params};
    // JSON cannot carry NaN or infinity, bincode can.
    for bad in [f32::NAN, f32::INFINITY] {
        let params = Params {
            kernel: Some(vec![vec![bad]]),
            ..Default::default()
        };
        let err =
            Conv2d::plan(&params, &kiln_kernels::Inputs::none(), &Limits::default()).unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidInput);
    }
}
