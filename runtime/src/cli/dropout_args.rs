//! The dropout flags shared by every command that builds a step:
//! `--fwd P --bwd Q` (augmented), `--dropout MODE` for the others.

use clap::{Args, ValueEnum};
use dropjit_graph::dropout::DropoutConfig;
use dropjit_graph::DropoutMode;

use super::CliError;

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum ModeArg {
    Plain,
    Standard,
    Forward,
    Backward,
    Augmented,
}

#[derive(Args, Debug, Clone, Default)]
pub struct DropoutArgs {
    /// Dropout mode; default augmented when --fwd or --bwd is given, else plain.
    #[arg(long, value_enum)]
    pub dropout: Option<ModeArg>,
    /// Forward drop ratio (mask F): standard, forward and augmented modes.
    #[arg(long, allow_negative_numbers = true)]
    pub fwd: Option<f64>,
    /// Backward drop ratio (mask G, B = F ⊙ G): backward and augmented modes.
    #[arg(long, allow_negative_numbers = true)]
    pub bwd: Option<f64>,
}

impl DropoutArgs {
    pub fn config(&self) -> Result<DropoutConfig, CliError> {
        let mode = match self.dropout {
            Some(ModeArg::Plain) => DropoutMode::Plain,
            Some(ModeArg::Standard) => DropoutMode::Standard,
            Some(ModeArg::Forward) => DropoutMode::Forward,
            Some(ModeArg::Backward) => DropoutMode::Backward,
            Some(ModeArg::Augmented) => DropoutMode::Augmented,
            None if self.fwd.is_some() || self.bwd.is_some() => DropoutMode::Augmented,
            None => DropoutMode::Plain,
        };
        let (fwd, bwd) = (self.fwd.unwrap_or(0.0), self.bwd.unwrap_or(0.0));
        for (flag, p) in [("--fwd", fwd), ("--bwd", bwd)] {
            dropjit_graph::dropout::check_ratio(p).map_err(|m| format!("{flag}: {m}"))?;
        }
        let needs = |flag: &str, given: Option<f64>| -> Result<(), CliError> {
            if given.is_none() {
                return Err(format!("--dropout {} needs {flag}", mode.name()).into());
            }
            Ok(())
        };
        // A ratio the mode does not use would be silently ignored (and would
        // name the run directory): refuse it.
        let unused = |flag: &str, given: Option<f64>| -> Result<(), CliError> {
            if given.is_some() {
                return Err(format!(
                    "{flag}: --dropout {} does not use it (augmented takes --fwd and --bwd)",
                    mode.name()
                )
                .into());
            }
            Ok(())
        };
        match mode {
            DropoutMode::Plain => {
                unused("--fwd", self.fwd)?;
                unused("--bwd", self.bwd)?;
            }
            DropoutMode::Standard | DropoutMode::Forward => {
                needs("--fwd", self.fwd)?;
                unused("--bwd", self.bwd)?;
            }
            DropoutMode::Backward => {
                needs("--bwd", self.bwd)?;
                unused("--fwd", self.fwd)?;
            }
            DropoutMode::Augmented => {}
        }
        Ok(DropoutConfig { mode, fwd, bwd })
    }
}
