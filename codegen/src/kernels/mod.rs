//! Low-level kernel toolkit: Cranelift-JIT fused elementwise loop nests,
//! per-channel reductions and scalar loop nests (option-A shortcut, softmax
//! cross-entropy), a small persistent thread pool, and
//! GEMM / im2col / col2im helpers callable from JIT code.
//!
//! Kernel ABI (see [`jit::KernelFn`]):
//! `unsafe extern "C" fn(args: *const *mut f32, keys: *const u64, begin: i64, end: i64)`
//! where `args[b]` is buffer `BufId(b)`, `keys[k]` the dropout mask key of
//! `KeySlot(k)` for the current step, and `begin..end` the split range (outer
//! dimension for elementwise kernels, channels for reductions, planes or rows
//! for the scalar loop nests).
//!
//! Dropout masks come from [`dropjit_graph::mask`]; the JIT emits the same
//! hash and is tested to agree bit for bit.

pub mod elementwise;
pub mod expr;
mod expr_to_clif;
pub mod gemm;
pub mod jit;
pub mod parallel;
pub mod reduce;
mod scalar;
pub mod shortcut;
pub mod softmax;
