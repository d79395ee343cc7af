//! Tensors, datasets and models in host memory.

/// An f32 tensor in host memory: its shape and its values in row-major order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HostTensor {
    /// Size of each dimension, outermost first (empty for a scalar).
    pub shape: Vec<usize>,
    /// The values, row-major; as many as the product of `shape`.
    pub data: Vec<f32>,
}

impl HostTensor {
    /// A tensor of `shape` holding `data`; the caller keeps `data.len()` equal to the
    /// product of `shape`.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Self { shape, data }
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether it holds no values.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// A labelled dataset: `x` is samples × features, `y` one class index per sample.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Dataset {
    /// Features, shape [samples, features].
    pub x: HostTensor,
    /// Class index of each sample, from 0.
    pub y: Vec<u32>,
}

/// Named tensors with string metadata: a safetensors file in memory (a trained model).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Model {
    /// Each tensor with its name.
    pub tensors: Vec<(String, HostTensor)>,
    /// The file's `__metadata__`: for a `train_mlp` model its format, version and layer widths.
    pub metadata: std::collections::BTreeMap<String, String>,
}
