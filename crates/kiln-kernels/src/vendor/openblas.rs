//! Matrix products on the CPU through OpenBLAS, loaded at run time.
//!
//! burn-ndarray multiplies through the `matrixmultiply` crate, which reached 0.30–0.52 of numpy's
//! OpenBLAS on this repository's AVX-512 machine; linking OpenBLAS into burn-ndarray (the `blas`
//! feature) reached 0.89–0.92 but needs `libopenblas-dev` to build. Loading the library when the
//! worker starts gives the same speed to every build wherever the library is installed
//! (`libopenblas0` on Debian and Ubuntu, `openblas` on Fedora; the CPU image ships it), and leaves
//! a machine without it on burn-ndarray.
//!
//! The library is looked up as `$KILN_OPENBLAS` (a path or a file name) when set, else as
//! `libopenblas.so.0` and `libopenblas.so` on the loader path. `./dev` points `KILN_OPENBLAS` at
//! the scipy-openblas32 wheel's `libscipy_openblas.so` on machines without a system OpenBLAS;
//! that build prefixes its symbols with `scipy_`, which is looked up as well. Products are
//! `cblas_sgemm` in row-major order with the 32-bit integer interface (OpenBLAS's default build),
//! f32 in and out.
//! OpenBLAS runs each product on its own thread pool (`OPENBLAS_NUM_THREADS`, default: every
//! core).
#![allow(unsafe_code)]

use std::ffi::{CStr, c_char, c_float, c_int};
use std::sync::OnceLock;

use kiln_proto::JobError;
use libloading::{Library, Symbol};

/// `cblas_sgemm(order, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)`.
type Sgemm = unsafe extern "C" fn(
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    c_float,
    *const c_float,
    c_int,
    *const c_float,
    c_int,
    c_float,
    *mut c_float,
    c_int,
);
type GetConfig = unsafe extern "C" fn() -> *const c_char;

const ROW_MAJOR: c_int = 101;
const NO_TRANS: c_int = 111;

/// The loaded library and its `cblas_sgemm`.
struct OpenBlas {
    /// Keeps `sgemm` valid.
    _library: Library,
    sgemm: Sgemm,
    /// Which file, and OpenBLAS's own description of its build.
    description: String,
}

fn candidates() -> Vec<String> {
    match std::env::var("KILN_OPENBLAS") {
        Ok(name) if !name.is_empty() => vec![name],
        _ => vec!["libopenblas.so.0".into(), "libopenblas.so".into()],
    }
}

fn load() -> Result<OpenBlas, String> {
    let names = candidates();
    let mut errors = Vec::new();
    for name in &names {
        // SAFETY: loading OpenBLAS runs its initialisers (thread pool set-up), nothing else.
        let library = match unsafe { Library::new(name) } {
            Ok(library) => library,
            Err(e) => {
                errors.push(format!("{name}: {e}"));
                continue;
            }
        };
        // SAFETY: `cblas_sgemm` has this signature in every CBLAS with 32-bit integers, which
        // OpenBLAS builds by default (its 64-bit-integer builds are named libopenblas64_);
        // scipy's build names it `scipy_cblas_sgemm`.
        let found = [&b"cblas_sgemm\0"[..], b"scipy_cblas_sgemm\0"]
            .into_iter()
            .find_map(|symbol| unsafe { library.get::<Sgemm>(symbol) }.ok().map(|s| *s));
        let Some(sgemm) = found else {
            errors.push(format!("{name}: no cblas_sgemm"));
            continue;
        };
        // SAFETY: `openblas_get_config` takes nothing and returns a static C string.
        let config = [
            &b"openblas_get_config\0"[..],
            b"scipy_openblas_get_config\0",
        ]
        .into_iter()
        .find_map(|symbol| unsafe { library.get::<GetConfig>(symbol) }.ok())
        .map(|get: Symbol<'_, GetConfig>| {
            // SAFETY: see above; the string lives as long as the library.
            unsafe { CStr::from_ptr(get()) }
                .to_string_lossy()
                .trim()
                .to_owned()
        })
        .unwrap_or_else(|| "no openblas_get_config".into());
        return Ok(OpenBlas {
            description: format!("{name} ({config})"),
            _library: library,
            sgemm,
        });
    }
    Err(format!(
        "OpenBLAS could not be loaded ({}); install libopenblas0 (Debian, Ubuntu) or openblas \
         (Fedora), or set KILN_OPENBLAS to the library's path",
        errors.join("; ")
    ))
}

fn library() -> Result<&'static OpenBlas, String> {
    static LIBRARY: OnceLock<Result<OpenBlas, String>> = OnceLock::new();
    LIBRARY.get_or_init(load).as_ref().map_err(Clone::clone)
}

/// Check that OpenBLAS loads and multiplies; `Ok` names the library and its build.
pub fn probe() -> Result<String, String> {
    super::check_product("OpenBLAS", |a, b| matmul(a, b, 1, 2, 1))?;
    Ok(library()?.description.clone())
}

fn dim(name: &str, value: usize) -> Result<c_int, JobError> {
    super::blas_dim("OpenBLAS", name, value)
}

/// C = A·B, A m×k and B k×n, row-major f32.
pub fn matmul(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Result<Vec<f32>, JobError> {
    let mut c = vec![0.0f32; m * n];
    matmul_into(a, b, &mut c, (m, k, n))?;
    Ok(c)
}

/// C = A·B into `c`, A m×k, B k×n and C m×n, row-major f32 (the kernel benchmarks reuse C).
pub fn matmul_into(
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    (m, k, n): (usize, usize, usize),
) -> Result<(), JobError> {
    let blas = library().map_err(JobError::internal)?;
    let (mi, ki, ni) = (dim("m", m)?, dim("k", k)?, dim("n", n)?);
    if a.len() != m * k || b.len() != k * n || c.len() != m * n {
        return Err(JobError::internal(format!(
            "matmul buffers of {}, {} and {} elements do not fit m={m} k={k} n={n}",
            a.len(),
            b.len(),
            c.len()
        )));
    }
    // SAFETY: A holds m·k, B k·n and C m·n f32 values (checked above), row-major with leading
    // dimensions k, n and n; OpenBLAS reads A and B and writes C only within those bounds.
    unsafe {
        (blas.sgemm)(
            ROW_MAJOR,
            NO_TRANS,
            NO_TRANS,
            mi,
            ni,
            ki,
            1.0,
            a.as_ptr(),
            ki.max(1),
            b.as_ptr(),
            ni.max(1),
            0.0,
            c.as_mut_ptr(),
            ni.max(1),
        );
    }
    Ok(())
}

/// Whether OpenBLAS loads in this process (tests use it to know which engine to expect).
pub fn available() -> bool {
    library().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn products_match_the_definition_where_openblas_is_installed() {
        if !available() {
            eprintln!("SKIPPED: OpenBLAS is not installed here ({:?})", probe());
            return;
        }
        // 2×3 by 3×2, exact in f32.
        let c = matmul(
            &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
            &[7.0, 8.0, 9.0, 10.0, 11.0, 12.0],
            2,
            3,
            2,
        )
        .unwrap();
        assert_eq!(c, [58.0, 64.0, 139.0, 154.0]);
        let description = probe().unwrap();
        assert!(
            description.contains("libopenblas") || description.contains(".so"),
            "{description}"
        );
    }
}
