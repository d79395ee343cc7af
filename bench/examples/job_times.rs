//! Whole jobs in-process on the CPU, as a CPU worker runs them (inputs generated from the seed,
//! compute, summary), with kiln's allocator: median wall time per job over a few runs; then
//! the two pieces of host work every job does, alone: generating 16M seeded values, and the
//! summary of 16M values.
//!
//!     cargo run --release -p kiln-bench --example job_times [-- --conv2d-engine burn]

use std::time::Instant;

use kiln_kernels::{
    ComputeDevice, ConvEngine, Engines, NoCheckpoint, Summary, find, seeded_values,
};
use kiln_proto::{Codec, Limits};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const JOBS: &[(&str, &str)] = &[
    ("vector_add", r#"{"len": 1048576}"#),
    ("vector_add", r#"{"len": 16777216}"#),
    ("vector_add", r#"{"len": 67108864}"#),
    ("matmul", r#"{"n": 1024}"#),
    (
        "conv2d",
        r#"{"batch": 1, "channels": 3, "height": 256, "width": 256, "filter": "gaussian"}"#,
    ),
    (
        "conv2d",
        r#"{"batch": 8, "channels": 3, "height": 224, "width": 224, "filter": "gaussian"}"#,
    ),
    (
        "conv2d",
        r#"{"batch": 1, "channels": 3, "height": 1024, "width": 1024, "filter": "sobel"}"#,
    ),
];

const RUNS: usize = 7;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mut engines = Engines::default();
    if args
        .windows(2)
        .any(|w| w[0] == "--conv2d-engine" && w[1] == "burn")
    {
        engines.conv = ConvEngine::Burn;
    }
    let limits = Limits {
        max_elements: 1 << 30,
        ..Limits::default()
    };
    for (kind, params) in JOBS {
        let body = format!(r#"{{"params": {params}, "seed": 1}}"#);
        let job = find(kind)
            .expect("a registered kind")
            .decode(Codec::Json, body.as_bytes(), &limits)
            .expect("valid parameters");
        let times: Vec<f64> = (0..=RUNS)
            .map(|_| {
                let start = Instant::now();
                let out = job
                    .run_with(&ComputeDevice::Cpu, engines, &NoCheckpoint)
                    .expect("the job runs");
                std::hint::black_box(out);
                start.elapsed().as_secs_f64() * 1e3
            })
            .skip(1)
            .collect();
        println!("{kind:<10} {params:<80} median {:>9.3} ms", median(times));
    }
    const N: usize = 1 << 24;
    let generate = median_ms(|| std::hint::black_box(seeded_values(1, 0, N)).len());
    println!("{:<91} median {generate:>9.3} ms", "seeded_values 16M");
    let values = seeded_values(1, 0, N);
    let summary = median_ms(|| std::hint::black_box(Summary::of(&values)).min as usize);
    println!("{:<91} median {summary:>9.3} ms", "Summary::of 16M");
}

fn median(mut times: Vec<f64>) -> f64 {
    times.sort_by(f64::total_cmp);
    times[RUNS / 2]
}

/// The median over `RUNS` of `f`'s wall time, after one untimed run.
fn median_ms(f: impl Fn() -> usize) -> f64 {
    let times = (0..=RUNS)
        .map(|_| {
            let start = Instant::now();
            std::hint::black_box(f());
            start.elapsed().as_secs_f64() * 1e3
        })
        .skip(1)
        .collect();
    median(times)
}
