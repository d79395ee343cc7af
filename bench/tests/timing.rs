//! The kernel benchmark's quick cases, run for real on the CPU: every case gives a row with
//! positive, finite timings and the work its sizes imply; bf16 is skipped on the CPU.

use kiln_bench::timing::{Case, Profile, SMALL_ITERS_FACTOR, Settings, cases, run_case, run_cases};
use kiln_kernels::{ComputeDevice, Dtype, Engines};

const SETTINGS: Settings = Settings {
    warmup: 1,
    iters: 3,
    case_budget_s: 5.0,
};

#[test]
fn quick_cases_measure_positive_finite_times_on_the_cpu() {
    let cases = cases(Profile::Quick);
    let mut seen = 0;
    let rows = run_cases(
        &ComputeDevice::Cpu,
        Engines::default(),
        &cases,
        &SETTINGS,
        |_| seen += 1,
    );
    assert_eq!(seen, cases.len());
    assert_eq!(rows.len(), cases.len());
    for (case, row) in cases.iter().zip(&rows) {
        assert_eq!(row.case, case.name);
        let blas = case.family() == "matmul"
            && case.dtype() == Dtype::F32
            && !case.name.ends_with("_burn")
            && kiln_kernels::vendor::openblas::available();
        // Depthwise filters without `_burn` run on the direct loop, as conv2d jobs do.
        let direct = case.name.starts_with("conv2d_dw") && !case.name.ends_with("_burn");
        let backend = match (blas, direct) {
            (true, _) => "openblas",
            (_, true) => "direct",
            _ => "burn-ndarray",
        };
        assert_eq!(row.backend, backend, "{}", case.name);
        assert_eq!(row.device, "cpu");
        if case.dtype() != Dtype::F32 {
            assert_eq!(row.status, "skipped", "{row:?}");
            let needs = format!("{} needs a GPU", case.dtype().as_str());
            assert_eq!(row.error.as_deref(), Some(needs.as_str()));
            assert!(row.median_s.is_none());
            continue;
        }
        assert_eq!(row.status, "ok", "{row:?}");
        assert_eq!(row.dtype, "f32");
        let expected_iters = if case.family() == "small_vector_add" {
            SETTINGS.iters * SMALL_ITERS_FACTOR
        } else {
            SETTINGS.iters
        };
        assert_eq!(row.iterations, expected_iters, "{}", row.case);
        for t in [row.median_s, row.mean_s, row.min_s] {
            let t = t.unwrap();
            assert!(t.is_finite() && t > 0.0, "{}: {t}", row.case);
        }
        assert!(row.min_s.unwrap() <= row.median_s.unwrap());
        let value = row.value.unwrap();
        assert!(value.is_finite() && value > 0.0, "{}: {value}", row.case);
    }
}

#[test]
fn work_counts_follow_the_sizes() {
    let matmul = Case::matmul(4096, Dtype::F32);
    assert_eq!(matmul.flops(), Some(2.0 * 4096f64.powi(3)));
    assert_eq!(matmul.metric(), "TFLOP/s");
    // 2n³ flops in one second.
    assert!((matmul.value(1.0).unwrap() - 2.0 * 4096f64.powi(3) / 1e12).abs() < 1e-12);

    let add = Case::vector_add(64 << 20, false);
    assert_eq!(add.name, "vector_add_f32_64M");
    assert_eq!(
        Case::vector_add(64 << 20, true).name,
        "vector_add_f32_64M_burn"
    );
    assert_eq!(add.bytes(), Some(3.0 * 4.0 * (64u64 << 20) as f64));
    assert_eq!(add.flops(), None);
    assert!((add.value(1e-3).unwrap() - 12.0 * (64u64 << 20) as f64 / 1e-3 / 1e9).abs() < 1e-6);

    let conv = Case::conv2d([32, 64, 224, 224], 64, Dtype::Bf16);
    assert_eq!(conv.name, "conv2d_3x3_bf16_32x64x224x224_c64");
    assert_eq!(
        conv.flops(),
        Some(2.0 * 32.0 * 64.0 * 224.0 * 224.0 * 64.0 * 9.0)
    );

    let filter = Case::filter([32, 3, 512, 512], 5, Dtype::F32, false);
    assert_eq!(filter.name, "conv2d_dw5x5_f32_32x3x512x512");
    // Depthwise: one input channel per output channel, 25 taps.
    assert_eq!(
        filter.flops(),
        Some(2.0 * 32.0 * 3.0 * 512.0 * 512.0 * 25.0)
    );
    assert_eq!(
        filter.shape(),
        "input 32x3x512x512, weight 3x1x5x5, padding 2, 3 groups"
    );
    assert_eq!(
        Case::filter([1, 3, 8, 8], 5, Dtype::F32, true).name,
        "conv2d_dw5x5_f32_1x3x8x8_burn"
    );

    let step = Case::train_step(512, 256, &[1024, 1024], 10);
    assert_eq!(step.name, "train_mlp_step_256-1024-1024-10_b512");
    let weights = 257 * 1024 + 1025 * 1024 + 1025 * 10;
    assert_eq!(step.flops(), Some(6.0 * weights as f64 * 512.0));
    assert_eq!(step.metric(), "ms/step");
    assert_eq!(step.value(0.002), Some(2.0));

    let small = Case::small_vector_add(1024, false);
    assert_eq!(small.name, "small_vector_add_roundtrip_1024");
    assert_eq!(
        Case::small_vector_add(1024, true).name,
        "small_vector_add_roundtrip_1024_burn"
    );
    assert_eq!(small.metric(), "us/job");
    assert_eq!(small.value(45e-6).map(|v| (v * 1e3).round()), Some(45e3));
}

#[test]
fn a_case_that_panics_becomes_an_error_row() {
    // Zero classes: the label of sample i is i % 0, a panic inside the case.
    let case = Case::train_step(4, 2, &[2], 0);
    let rows = run_cases(
        &ComputeDevice::Cpu,
        Engines::default(),
        &[case],
        &SETTINGS,
        |_| {},
    );
    assert_eq!(rows[0].status, "error");
    assert!(
        rows[0].error.as_deref().unwrap().starts_with("panicked: "),
        "{:?}",
        rows[0].error
    );
    assert_eq!(rows[0].median_s, None);
    assert_eq!(rows[0].iterations, 0);
}

#[test]
fn burn_engines_move_the_job_like_cases_onto_burn() {
    let settings = Settings {
        warmup: 0,
        iters: 1,
        case_budget_s: 1.0,
    };
    let blas = if kiln_kernels::vendor::openblas::available() {
        "openblas"
    } else {
        "burn-ndarray"
    };
    for (case, native) in [
        (Case::matmul(64, Dtype::F32), blas),
        (Case::filter([1, 3, 16, 16], 5, Dtype::F32, false), "direct"),
    ] {
        let row = run_case(&ComputeDevice::Cpu, Engines::default(), &case, &settings);
        assert_eq!(row.backend, native, "{}", case.name);
        let row = run_case(&ComputeDevice::Cpu, Engines::BURN, &case, &settings);
        assert_eq!(row.status, "ok", "{row:?}");
        assert_eq!(row.backend, "burn-ndarray", "{}", case.name);
    }
}
