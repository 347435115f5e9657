//! dropjit's code generator: lowers a step or evaluation graph to fused
//! Cranelift kernels and GEMM calls, plans one arena from buffer lifetimes, and
//! runs the result. It reads no files and knows no data sets.

pub mod arena;
pub mod avgpool;
pub mod conv;
pub mod exec;
pub mod kernels;
pub mod layout;
pub mod lower;
pub mod maxpool;
mod memory_plan;
pub mod schedule;

pub use conv::ConvIsa;
pub use exec::{clif_text, compile, plan_text, CompileOptions, CompiledGraph};
pub use layout::{step_keys, StateLayout};

#[derive(Debug, thiserror::Error)]
pub enum CodegenError {
    #[error("cannot compile: {0}")]
    Unsupported(String),
    #[error("memory plan rejected: {0}")]
    Plan(String),
    #[error(transparent)]
    Kernel(#[from] kernels::jit::KernelError),
}
