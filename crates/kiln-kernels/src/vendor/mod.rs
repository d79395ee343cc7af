//! The vendor libraries kiln calls directly, all loaded at run time: cuBLAS (`matmul` and
//! `vector_add` on CUDA), cuDNN (`conv2d` on CUDA) and OpenBLAS (`matmul` on the CPU), with
//! what they share; and NVRTC, which compiles kiln's one CUDA kernel of its own (seeded inputs
//! made on the device).

pub mod cublas;
mod cuda;
pub mod cudnn;
pub mod nvrtc;
pub mod openblas;

use kiln_proto::JobError;

/// A matrix dimension as the 32-bit integer both BLAS interfaces take (cuBLAS's `int`, CBLAS's
/// `blasint` in OpenBLAS's default build); larger is `too_large`, naming the `library`.
fn blas_dim(library: &str, name: &str, value: usize) -> Result<i32, JobError> {
    i32::try_from(value).map_err(|_| {
        JobError::too_large(format!(
            "matmul {name}={value} is over {library}'s limit of {} per dimension",
            i32::MAX
        ))
    })
}

/// The start-up check of a BLAS: `product` computes [1 2]·[3 4]ᵀ, which must be [11].
fn check_product(
    library: &str,
    product: impl FnOnce(&[f32], &[f32]) -> Result<Vec<f32>, JobError>,
) -> Result<(), String> {
    let c = product(&[1.0, 2.0], &[3.0, 4.0]).map_err(|e| e.message)?;
    if c == [11.0] {
        Ok(())
    } else {
        Err(format!("{library} computed [1 2]·[3 4]ᵀ = {c:?}, not [11]"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dimensions_over_the_int_limit_are_too_large() {
        let e = blas_dim("cuBLAS", "m", 1 << 31).unwrap_err();
        assert_eq!(e.kind, kiln_proto::ErrorKind::TooLarge);
        assert!(e.message.contains("m=2147483648"), "{}", e.message);
        assert!(e.message.contains("cuBLAS's limit"), "{}", e.message);
        assert_eq!(blas_dim("OpenBLAS", "k", 4096).unwrap(), 4096);
    }

    #[test]
    fn the_start_up_check_wants_eleven() {
        assert_eq!(check_product("x", |_, _| Ok(vec![11.0])), Ok(()));
        let e = check_product("x", |_, _| Ok(vec![10.0])).unwrap_err();
        assert_eq!(e, "x computed [1 2]·[3 4]ᵀ = [10.0], not [11]");
    }
}
