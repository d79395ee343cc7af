//! Whole jobs in-process on the CPU, as a CPU worker runs them (inputs generated from the seed,
//! compute, summary), with kiln's allocator: median wall time per job over a few runs.
//!
//!     cargo run --release -p kiln-kernels --example job_times [-- --conv2d-engine burn]

use std::time::Instant;

use kiln_kernels::{ComputeDevice, ConvEngine, NoCheckpoint, find, set_conv_engine};
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
    if args
        .windows(2)
        .any(|w| w[0] == "--conv2d-engine" && w[1] == "burn")
    {
        set_conv_engine(ConvEngine::Burn);
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
        let mut times: Vec<f64> = (0..=RUNS)
            .map(|_| {
                let start = Instant::now();
                let out = job
                    .run(&ComputeDevice::Cpu, &NoCheckpoint)
                    .expect("the job runs");
                std::hint::black_box(out);
                start.elapsed().as_secs_f64() * 1e3
            })
            .skip(1)
            .collect();
        times.sort_by(f64::total_cmp);
        println!("{kind:<10} {params:<80} median {:>9.3} ms", times[RUNS / 2]);
    }
}
