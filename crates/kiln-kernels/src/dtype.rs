//! The element type a job computes in (`"dtype"` of `matmul` and `conv2d` jobs, and of the
//! kernel benchmark's cases), and the conversions of f32 host data to and from the 16-bit types
//! the vendor libraries read.

use burn::tensor::{DType, FloatDType};
use serde::{Deserialize, Serialize};

/// The element type a product or convolution is computed in. Inputs and outputs travel as f32.
/// On the wire (job parameters, results, benchmark rows) it is spelled as [`Dtype::as_str`]
/// says: `"f32"`, `"tf32"`, `"bf16"`, `"f16"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    /// 32-bit floats. On cuBLAS and cuDNN true f32; on Burn's CUDA kernels products may run on
    /// tensor cores at TF32-like precision, which Burn 0.21 cannot turn off.
    #[default]
    F32,
    /// f32 inputs and output, products on tensor cores with TF32's 10-bit mantissa (what
    /// PyTorch computes with `allow_tf32`), GPU only.
    Tf32,
    /// bfloat16 inputs and output, GPU only.
    Bf16,
    /// IEEE half-precision inputs and output, GPU only.
    F16,
}

impl Dtype {
    /// The name used in parameters and outputs.
    pub fn as_str(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::Tf32 => "tf32",
            Dtype::Bf16 => "bf16",
            Dtype::F16 => "f16",
        }
    }

    /// The Burn element type to cast f32 tensors to, if any (tf32 runs as Burn's f32).
    pub fn burn_dtype(self) -> Option<FloatDType> {
        match self {
            Dtype::F32 | Dtype::Tf32 => None,
            Dtype::Bf16 => Some(FloatDType::BF16),
            Dtype::F16 => Some(FloatDType::F16),
        }
    }

    /// Whether values travel to the device as 16-bit floats.
    pub(crate) fn is_half(self) -> bool {
        matches!(self, Dtype::Bf16 | Dtype::F16)
    }

    /// The `invalid_input` answer of a CPU worker to a GPU-only dtype; `None` for f32.
    pub(crate) fn refuse_on_cpu(self, kind: &str) -> Option<kiln_proto::JobError> {
        (self != Dtype::F32).then(|| {
            kiln_proto::JobError::invalid_input(format!(
                "dtype {} needs a GPU worker; submit to jobs.gpu.{kind} or use f32",
                self.as_str()
            ))
        })
    }
}

/// The lowercase name of a Burn tensor's element type (`f32`, `bf16`, `f16` …), as results and
/// benchmark rows report the dtype a computation really ran in.
pub fn dtype_name(dtype: DType) -> String {
    match dtype {
        DType::F32 => "f32".into(),
        DType::BF16 => "bf16".into(),
        DType::F16 => "f16".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// f32 values as the bits of `dtype`'s 16-bit type (bf16 for anything but f16), rounded to
/// nearest.
pub(crate) fn to_half(values: &[f32], dtype: Dtype) -> Vec<u16> {
    match dtype {
        Dtype::F16 => values
            .iter()
            .map(|&v| half::f16::from_f32(v).to_bits())
            .collect(),
        _ => values
            .iter()
            .map(|&v| half::bf16::from_f32(v).to_bits())
            .collect(),
    }
}

/// The bits of `dtype`'s 16-bit type back as f32 (exact).
pub(crate) fn from_half(bits: &[u16], dtype: Dtype) -> Vec<f32> {
    match dtype {
        Dtype::F16 => bits
            .iter()
            .map(|&b| half::f16::from_bits(b).to_f32())
            .collect(),
        _ => bits
            .iter()
            .map(|&b| half::bf16::from_bits(b).to_f32())
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_conversions_round_trip_representable_values() {
        let values = [0.0f32, 1.0, -2.5, 0.125, 3072.0];
        assert_eq!(from_half(&to_half(&values, Dtype::F16), Dtype::F16), values);
        assert_eq!(
            from_half(&to_half(&values, Dtype::Bf16), Dtype::Bf16),
            values
        );
        // bf16 keeps 8 bits of mantissa: 1 + 2^-9 rounds to 1.
        assert_eq!(
            from_half(&to_half(&[1.0 + 2f32.powi(-9)], Dtype::Bf16), Dtype::Bf16),
            [1.0]
        );
    }

    #[test]
    fn a_cpu_refuses_every_dtype_but_f32() {
        assert!(Dtype::F32.refuse_on_cpu("conv2d").is_none());
        let e = Dtype::Bf16.refuse_on_cpu("conv2d").unwrap();
        assert_eq!(e.kind, kiln_proto::ErrorKind::InvalidInput);
        assert_eq!(
            e.message,
            "dtype bf16 needs a GPU worker; submit to jobs.gpu.conv2d or use f32"
        );
    }
}
