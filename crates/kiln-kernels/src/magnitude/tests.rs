use super::*;
use crate::dtype::{Dtype, from_half, to_half};
use crate::kinds::conv2d::magnitude;

/// The kernel's own source compiled for this CPU (`host.cpp`), in a folder of its own for each
/// test (`test`: the tests run at once, and each removes its folder); its path.
fn host_build_of_the_kernel(test: &str) -> std::path::PathBuf {
    let name = format!("magnitude-{test}");
    crate::host_kernel::build(&name, KERNEL_SOURCE, include_str!("host.cpp"))
}

/// The kernel's host build run on `maps` (little-endian bytes of `kind`: f32, bf16 or f16).
fn run_host_kernel(
    exe: &std::path::Path,
    kind: &str,
    plane: usize,
    passes: usize,
    maps: Vec<u8>,
) -> Vec<f32> {
    use std::io::Write as _;
    let mut child = std::process::Command::new(exe)
        .args([kind, &plane.to_string(), &passes.to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(&maps).unwrap());
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(out.status.success(), "{kind}");
    out.stdout
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

/// Index of the first value whose bits differ, if any.
fn first_difference(a: &[f32], b: &[f32]) -> Option<usize> {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter()
        .zip(b)
        .position(|(x, y)| x.to_bits() != y.to_bits())
}

/// The kernel's output for f32 maps and for the same maps rounded to bf16 and f16, against the
/// host's: `magnitude` of the maps as the host reads them back (16-bit maps widened by
/// `from_half`).
fn check(exe: &std::path::Path, maps: &[f32], plane: usize, passes: usize) {
    let bytes: Vec<u8> = maps.iter().flat_map(|v| v.to_le_bytes()).collect();
    let kernel = run_host_kernel(exe, "f32", plane, passes, bytes);
    let host = magnitude(maps.to_vec(), passes, plane);
    assert_eq!(
        first_difference(&kernel, &host),
        None,
        "f32, {passes} passes"
    );
    for dtype in [Dtype::Bf16, Dtype::F16] {
        let bits = to_half(maps, dtype);
        let bytes: Vec<u8> = bits.iter().flat_map(|b| b.to_le_bytes()).collect();
        let kernel = run_host_kernel(exe, dtype.as_str(), plane, passes, bytes);
        let host = magnitude(from_half(&bits, dtype), passes, plane);
        assert_eq!(
            first_difference(&kernel, &host),
            None,
            "{}, {passes} passes",
            dtype.as_str()
        );
    }
}

#[test]
fn every_16_bit_value_widens_as_the_host_widens_it() {
    let exe = host_build_of_the_kernel("widen");
    let all: Vec<u16> = (0..=u16::MAX).collect();
    let bytes: Vec<u8> = all.iter().flat_map(|b| b.to_le_bytes()).collect();
    for dtype in [Dtype::Bf16, Dtype::F16] {
        let kernel = run_host_kernel(&exe, dtype.as_str(), 1, 1, bytes.clone());
        let host = from_half(&all, dtype);
        let wrong = first_difference(&kernel, &host).map(|i| (all[i], kernel[i], host[i]));
        assert_eq!(wrong, None, "{} (bits, kernel, host)", dtype.as_str());
    }
    std::fs::remove_dir_all(exe.parent().unwrap()).unwrap();
}

#[test]
fn the_kernel_source_run_on_the_cpu_makes_the_hosts_output() {
    let exe = host_build_of_the_kernel("maps");
    // Two images of three channels, planes of 7×9 (not a multiple of a block), then a plane
    // larger than a block of threads.
    for (planes, plane) in [(6, 63), (1, 1), (2, 1000)] {
        for passes in [1, 2] {
            let mut maps = crate::seeded_values(planes as u64, 3, planes * passes * plane);
            // Magnitudes far apart (squares that overflow, underflow, round), zeros of both
            // signs, and values that are not finite.
            for (i, v) in maps.iter_mut().enumerate() {
                *v *= [1.0, 3e-20, 2e19, 65504.0, 0.0, -0.0, 1e-40][i % 7];
            }
            maps[plane / 2] = f32::NAN;
            maps[plane - 1] = f32::INFINITY;
            let last = maps.len() - 1;
            maps[last] = f32::NEG_INFINITY;
            check(&exe, &maps, plane, passes);
        }
    }
    std::fs::remove_dir_all(exe.parent().unwrap()).unwrap();
}
