//! kiln's CUDA kernels compiled for the CPU, for their tests: each kernel's `host.cpp` includes
//! `host_shim.h` (CUDA's built-ins the kernels use, as plain C++) and the kernel's source, and
//! runs every thread of the launch grid in turn.

/// Build `host_cpp` with `kernel` beside it (as `kernel.cu`) and the shim, in a fresh folder
/// named after `name`; the executable's path. Needs a C++ compiler (`CXX`, default `c++`).
pub(crate) fn build(name: &str, kernel: &str, host_cpp: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("kiln-{name}-kernel-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("kernel.cu"), kernel).unwrap();
    std::fs::write(dir.join("host_shim.h"), include_str!("host_shim.h")).unwrap();
    std::fs::write(dir.join("host.cpp"), host_cpp).unwrap();
    let compiler = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let exe = dir.join("host");
    let built = std::process::Command::new(&compiler)
        .args(["-std=c++17", "-O2", "-ffp-contract=off", "-Wall", "-Wextra"])
        .arg("-Wno-unknown-pragmas")
        .arg("-o")
        .arg(&exe)
        .arg(dir.join("host.cpp"))
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "this test compiles a CUDA kernel's source for the CPU and needs a C++ \
                 compiler ({compiler}: {e}); install one (apt-get install g++) or set CXX"
            )
        });
    let warnings = String::from_utf8_lossy(&built.stderr);
    assert!(built.status.success(), "{compiler} failed:\n{warnings}");
    assert!(warnings.trim().is_empty(), "{compiler} warned:\n{warnings}");
    exe
}
