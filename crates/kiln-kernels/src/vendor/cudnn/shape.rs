//! The shape of one convolution as kiln and cuDNN take it, and the host's reference
//! convolution the start-up check and the tests compare cuDNN with.

use std::ffi::c_int;

use kiln_proto::JobError;

/// One forward convolution: NCHW input, OIHW weights with `channels / groups` input channels
/// each, stride 1, no dilation, zero padding `padding` on each side, no bias, and
/// cross-correlation (the kernel is not flipped), as PyTorch's and Burn's `conv2d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConvShape {
    /// Images in the batch.
    pub batch: usize,
    /// Input channels per image.
    pub channels: usize,
    /// Input rows.
    pub height: usize,
    /// Input columns.
    pub width: usize,
    /// Output channels per image.
    pub out_channels: usize,
    /// Kernel rows and columns.
    pub kernel: [usize; 2],
    /// Zero rows and columns added on each side.
    pub padding: [usize; 2],
    /// 1 for a dense convolution, `channels` for a depthwise one.
    pub groups: usize,
}

impl ConvShape {
    /// Output rows and columns.
    pub fn output_side(&self) -> [usize; 2] {
        [0, 1].map(|i| {
            let input = [self.height, self.width][i];
            (input + 2 * self.padding[i] + 1).saturating_sub(self.kernel[i])
        })
    }

    /// [batch, out_channels, rows, columns] of the output.
    pub fn output_dims(&self) -> [usize; 4] {
        let [h, w] = self.output_side();
        [self.batch, self.out_channels, h, w]
    }

    /// Elements of the input.
    pub fn input_len(&self) -> usize {
        self.batch * self.channels * self.height * self.width
    }

    /// Elements of the weights.
    pub fn weight_len(&self) -> usize {
        self.out_channels * (self.channels / self.groups.max(1)) * self.kernel[0] * self.kernel[1]
    }

    /// Elements of the output.
    pub fn output_len(&self) -> usize {
        self.output_dims().iter().product()
    }

    /// Refuse shapes cuDNN cannot take: groups that do not divide the channels, an output
    /// without pixels, sizes over cuDNN's 32-bit `int`.
    pub fn check(&self) -> Result<(), JobError> {
        let g = self.groups;
        if g == 0 || !self.channels.is_multiple_of(g) || !self.out_channels.is_multiple_of(g) {
            return Err(JobError::invalid_input(format!(
                "conv2d groups {g} must divide the input channels {} and output channels {}",
                self.channels, self.out_channels
            )));
        }
        if self.output_len() == 0 {
            return Err(JobError::invalid_input(format!(
                "conv2d output of {:?} has no pixels: the kernel {:?} is larger than the padded image",
                self.output_dims(),
                self.kernel
            )));
        }
        for (name, len) in [
            ("input", self.input_len()),
            ("weight", self.weight_len()),
            ("output", self.output_len()),
        ] {
            if c_int::try_from(len).is_err() {
                return Err(JobError::too_large(format!(
                    "conv2d {name} of {len} elements is over cuDNN's limit of {} per tensor",
                    c_int::MAX
                )));
            }
        }
        Ok(())
    }

    pub(super) fn int(value: usize) -> c_int {
        // `check` bounds every tensor's element count, and so each of its sizes.
        c_int::try_from(value).unwrap_or(c_int::MAX)
    }
}

/// The convolution of [`ConvShape`] computed directly on the host, with f64 accumulation: the
/// reference of the start-up check and of the tests.
pub fn conv2d_reference(x: &[f32], w: &[f32], s: &ConvShape) -> Vec<f32> {
    let [oh, ow] = s.output_side();
    let per_group_in = s.channels / s.groups;
    let per_group_out = s.out_channels / s.groups;
    let [kh, kw] = s.kernel;
    let mut out = vec![0.0f32; s.output_len()];
    for b in 0..s.batch {
        for o in 0..s.out_channels {
            let group = o / per_group_out;
            for y in 0..oh {
                for x_ in 0..ow {
                    let mut acc = 0.0f64;
                    for ci in 0..per_group_in {
                        let c = group * per_group_in + ci;
                        for i in 0..kh {
                            for j in 0..kw {
                                let (iy, ix) = (y + i, x_ + j);
                                let (Some(iy), Some(ix)) =
                                    (iy.checked_sub(s.padding[0]), ix.checked_sub(s.padding[1]))
                                else {
                                    continue;
                                };
                                if iy >= s.height || ix >= s.width {
                                    continue;
                                }
                                let xv = x[((b * s.channels + c) * s.height + iy) * s.width + ix];
                                let wv = w[((o * per_group_in + ci) * kh + i) * kw + j];
                                acc += f64::from(xv) * f64::from(wv);
                            }
                        }
                    }
                    out[((b * s.out_channels + o) * oh + y) * ow + x_] = acc as f32;
                }
            }
        }
    }
    out
}

/// The convolutions of the start-up check: a dense 3×3 one (as Burn's layers and the
/// benchmark use) and a depthwise 5×5 one (as `conv2d` jobs use), each with its input and
/// weights. The values are small integers, so that every product and sum is exact in f32.
pub fn probe_cases() -> Vec<(ConvShape, Vec<f32>, Vec<f32>)> {
    let dense = ConvShape {
        batch: 2,
        channels: 3,
        height: 5,
        width: 6,
        out_channels: 4,
        kernel: [3, 3],
        padding: [1, 1],
        groups: 1,
    };
    let depthwise = ConvShape {
        batch: 1,
        channels: 3,
        height: 7,
        width: 5,
        out_channels: 6,
        kernel: [5, 5],
        padding: [2, 2],
        groups: 3,
    };
    [dense, depthwise]
        .into_iter()
        .map(|shape| {
            let x = (0..shape.input_len())
                .map(|i| (i % 7) as f32 - 3.0)
                .collect();
            let w = (0..shape.weight_len())
                .map(|i| (i % 5) as f32 - 2.0)
                .collect();
            (shape, x, w)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use kiln_proto::ErrorKind;

    use super::*;

    fn shape(groups: usize, channels: usize, out: usize) -> ConvShape {
        ConvShape {
            batch: 1,
            channels,
            height: 3,
            width: 4,
            out_channels: out,
            kernel: [3, 3],
            padding: [1, 1],
            groups,
        }
    }

    #[test]
    fn same_padding_keeps_the_size_and_valid_padding_shrinks_it() {
        let same = shape(1, 2, 5);
        assert_eq!(same.output_dims(), [1, 5, 3, 4]);
        assert_eq!(same.weight_len(), 5 * 2 * 9);
        let valid = ConvShape {
            padding: [0, 0],
            ..same
        };
        assert_eq!(valid.output_dims(), [1, 5, 1, 2]);
        let none = ConvShape {
            kernel: [5, 5],
            ..valid
        };
        assert_eq!(none.output_len(), 0);
        assert_eq!(none.check().unwrap_err().kind, ErrorKind::InvalidInput);
    }

    #[test]
    fn groups_must_divide_both_channel_counts() {
        assert!(shape(3, 3, 6).check().is_ok());
        assert_eq!(shape(1, 3, 6).weight_len(), 6 * 3 * 9);
        assert_eq!(shape(3, 3, 6).weight_len(), 6 * 9);
        let e = shape(2, 3, 6).check().unwrap_err();
        assert_eq!(
            e.message,
            "conv2d groups 2 must divide the input channels 3 and output channels 6"
        );
        assert_eq!(
            shape(0, 3, 6).check().unwrap_err().kind,
            ErrorKind::InvalidInput
        );
    }

    #[test]
    fn tensors_over_the_int_limit_are_too_large() {
        let big = ConvShape {
            batch: 1 << 12,
            channels: 1 << 10,
            height: 1 << 5,
            width: 1 << 5,
            out_channels: 1,
            kernel: [1, 1],
            padding: [0, 0],
            groups: 1,
        };
        let e = big.check().unwrap_err();
        assert_eq!(e.kind, ErrorKind::TooLarge);
        assert!(
            e.message.starts_with("conv2d input of 4294967296 elements"),
            "{}",
            e.message
        );
    }

    #[test]
    fn the_reference_is_a_cross_correlation_with_zero_padding() {
        // One 3x4 image, an identity kernel shifted right: each output takes its right
        // neighbour, and the last column reads the zero padding.
        let s = shape(1, 1, 1);
        let x: Vec<f32> = (1..=12).map(|v| v as f32).collect();
        let mut w = vec![0.0; 9];
        w[5] = 1.0; // row 1, column 2
        assert_eq!(
            conv2d_reference(&x, &w, &s),
            [2., 3., 4., 0., 6., 7., 8., 0., 10., 11., 12., 0.]
        );
        // A 3x3 box sum at the centre of a 3x3 image of ones is 9, at a corner 4.
        let ones = ConvShape { width: 3, ..s };
        let out = conv2d_reference(&[1.0; 9], &[1.0; 9], &ones);
        assert_eq!(out, [4., 6., 4., 6., 9., 6., 4., 6., 4.]);
    }

    #[test]
    fn the_reference_keeps_groups_apart() {
        // Depthwise over two channels: channel 0 is scaled by 2, channel 1 by -1 (1x1 kernels).
        let s = ConvShape {
            kernel: [1, 1],
            padding: [0, 0],
            ..shape(2, 2, 2)
        };
        let x: Vec<f32> = (0..24).map(|v| v as f32).collect();
        let out = conv2d_reference(&x, &[2.0, -1.0], &s);
        let want: Vec<f32> = (0..12)
            .map(|v| 2.0 * v as f32)
            .chain((12..24).map(|v| -(v as f32)))
            .collect();
        assert_eq!(out, want);
    }
}
