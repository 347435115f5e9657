//! Which instruction set the convolution passes run on: chosen once per
//! compiled graph, by run-time detection or by `DROPJIT_ISA`.

use std::fmt;

/// The convolution engine's instruction set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConvIsa {
    /// Direct convolution, 16-lane AVX-512F micro-kernels.
    Avx512,
    /// Direct convolution, 8-lane AVX2 + FMA micro-kernels.
    Avx2,
    /// im2col + matrixmultiply SGEMM: runs on every CPU.
    Portable,
}

/// The environment variable that forces an instruction set.
pub const ISA_ENV: &str = "DROPJIT_ISA";

impl ConvIsa {
    pub const ALL: [ConvIsa; 3] = [ConvIsa::Avx512, ConvIsa::Avx2, ConvIsa::Portable];

    pub fn name(self) -> &'static str {
        match self {
            ConvIsa::Avx512 => "avx512",
            ConvIsa::Avx2 => "avx2",
            ConvIsa::Portable => "portable",
        }
    }

    pub fn parse(s: &str) -> Option<ConvIsa> {
        ConvIsa::ALL.into_iter().find(|i| i.name() == s)
    }

    /// Whether this CPU runs the instruction set.
    pub fn available(self) -> bool {
        match self {
            ConvIsa::Portable => true,
            #[cfg(target_arch = "x86_64")]
            ConvIsa::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
            #[cfg(target_arch = "x86_64")]
            ConvIsa::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The fastest instruction set this CPU runs.
    pub fn detected() -> ConvIsa {
        ConvIsa::ALL
            .into_iter()
            .find(|i| i.available())
            .unwrap_or(ConvIsa::Portable)
    }

    /// `DROPJIT_ISA` if set (`avx512`, `avx2`, `portable` or `auto`), else
    /// [`ConvIsa::detected`]. Asking for one this CPU lacks is an error.
    pub fn selected() -> Result<ConvIsa, String> {
        match std::env::var(ISA_ENV) {
            Err(_) => Ok(ConvIsa::detected()),
            Ok(v) if v.is_empty() || v == "auto" => Ok(ConvIsa::detected()),
            Ok(v) => {
                let isa = ConvIsa::parse(&v).ok_or_else(|| {
                    format!("{ISA_ENV}={v}: expected one of avx512, avx2, portable, auto")
                })?;
                if isa.available() {
                    Ok(isa)
                } else {
                    Err(format!("{ISA_ENV}={v}: this CPU does not run {v}"))
                }
            }
        }
    }
}

impl fmt::Display for ConvIsa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
