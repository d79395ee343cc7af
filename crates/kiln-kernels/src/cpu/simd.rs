//! Vector widths chosen at run time. The build targets baseline x86-64 (SSE2, four f32 lanes);
//! the few loops that are worth it are compiled again for AVX2 and AVX-512 and run in the
//! widest the CPU has. Each such loop does the same operations in the same order at every
//! width (lanes are independent), so its results do not depend on the machine, and its tests
//! run every width the CPU has.

/// The vector instructions a loop is compiled for. The wide ones carry a [`Detected`], which
/// only [`Width::all`] makes, after checking the CPU: holding one is what makes calling the
/// matching `#[target_feature]` code sound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Width {
    #[cfg(target_arch = "x86_64")]
    Avx512(Detected),
    #[cfg(target_arch = "x86_64")]
    Avx2(Detected),
    Baseline,
}

/// Proof that the CPU has the width it comes with (private: made only in this module).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Detected(());

impl Width {
    /// Every width this CPU runs, widest first.
    pub(crate) fn all() -> Vec<Width> {
        let mut widths = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                widths.push(Width::Avx512(Detected(())));
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                widths.push(Width::Avx2(Detected(())));
            }
        }
        widths.push(Width::Baseline);
        widths
    }

    /// The widest this CPU runs (detected once).
    pub(crate) fn widest() -> Width {
        static WIDEST: std::sync::OnceLock<Width> = std::sync::OnceLock::new();
        *WIDEST.get_or_init(|| Width::all()[0])
    }
}
