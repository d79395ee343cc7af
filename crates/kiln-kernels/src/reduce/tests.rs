use super::*;
use crate::Summary;
use crate::data::Lane;

/// The kernel's own source compiled for this CPU (`host.cpp`); its path.
fn host_build_of_the_kernel() -> std::path::PathBuf {
    crate::host_kernel::build("summary", KERNEL_SOURCE, include_str!("host.cpp"))
}

/// The lanes the kernel's host build makes for `values`.
fn run_host_kernel(exe: &std::path::Path, values: &[f32]) -> Vec<Lane> {
    use std::io::Write as _;
    let mut child = std::process::Command::new(exe)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(&bytes).unwrap());
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout.len() % Lane::BYTES, 0);
    let lanes: Vec<Lane> = out
        .stdout
        .chunks_exact(Lane::BYTES)
        .map(|b| Lane::from_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(lanes.len(), super::lanes(values.len()));
    lanes
}

/// Every field of two summaries, bit for bit.
fn bits(s: &Summary) -> (u64, u64, u32, u32, u64, u64) {
    (
        s.checksum.to_bits(),
        s.l2_norm.to_bits(),
        s.min.to_bits(),
        s.max.to_bits(),
        s.mean.to_bits(),
        s.non_finite,
    )
}

#[test]
fn the_kernel_takes_the_hosts_blocks_and_lanes() {
    assert!(KERNEL_SOURCE.contains(&format!("#define KILN_SUMMARY_BLOCK {BLOCK}ull")));
    assert!(KERNEL_SOURCE.contains(&format!("#define KILN_SUMMARY_LANES {LANES}ull")));
}

#[test]
fn the_tail_is_what_follows_the_last_whole_chunk() {
    assert_eq!(tail_start(0), 0);
    assert_eq!(tail_start(7), 0);
    assert_eq!(tail_start(8), 8);
    assert_eq!(tail_start(BLOCK), BLOCK);
    assert_eq!(tail_start(BLOCK + 13), BLOCK + 8);
    assert_eq!(lanes(0), 0);
    assert_eq!(lanes(1), LANES);
    assert_eq!(lanes(BLOCK + 1), 2 * LANES);
}

#[test]
fn the_kernel_source_run_on_the_cpu_gives_the_hosts_summary_bit_for_bit() {
    let exe = host_build_of_the_kernel();
    let mut cases: Vec<Vec<f32>> = [0, 1, 7, 8, 1000, BLOCK, BLOCK + 5, 3 * BLOCK + 4099]
        .into_iter()
        .map(|n| crate::seeded_values(n as u64, 0, n))
        .collect();
    // Magnitudes far apart (the order of f64 additions shows), and values that are not finite.
    let mut wide = crate::seeded_values(3, 1, 2 * BLOCK + 11);
    for (i, v) in wide.iter_mut().enumerate() {
        *v *= [1.0, 1e-7, 3e7, 1e30, 0.0, -0.0][i % 6];
    }
    cases.push(wide.clone());
    cases.push([-0.0, 0.0].repeat(13));
    wide[BLOCK + 9] = f32::NAN;
    wide[17] = f32::INFINITY;
    wide[2 * BLOCK + 10] = f32::NEG_INFINITY;
    cases.push(wide);
    for values in cases {
        let n = values.len();
        let lanes = run_host_kernel(&exe, &values);
        let device = Summary::of_lanes(n, &lanes, &values[tail_start(n)..]);
        let host = Summary::of(&values);
        assert_eq!(bits(&device), bits(&host), "n {n}: {device:?} vs {host:?}");
    }
    std::fs::remove_dir_all(exe.parent().unwrap()).unwrap();
}
