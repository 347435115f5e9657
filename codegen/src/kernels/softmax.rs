//! Softmax cross-entropy (mean over the batch) and its gradient as scalar
//! Cranelift loops over rows of `k` logits; `exp` and `ln` are calls to
//! Rust's `f32::exp` / `f32::ln` (Cranelift has no transcendental
//! instructions), so the values match the interpreter's bit for bit.
//!
//! ```text
//! per row r:  t = label[r];  m = first max of z[r];  s = Σ_j exp(z[r,j] - m)
//! loss:  L = Σ_r ((ln s + m) - z[r,t]),  out[0] = L / n    (one range: rows in order)
//! grad:  dz[r,j] = (exp(z[r,j] - m) / s - [j == t]) / n   (split by rows)
//! ```
//! Labels arrive as u32 bit patterns in an f32 buffer. The runtime rejects a
//! batch with a label `>= k` before the step runs; the loop also clamps the
//! label to `k - 1` so that no label can address outside its row.

use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::types::{F32, I32, I64};
use cranelift_codegen::ir::{FuncRef, InstBuilder, MemFlagsData, Value};
use cranelift_frontend::FunctionBuilder;

use super::jit::{FuncEnv, Helper, KernelSpec, Result};
use super::scalar::{arg_ptr, counted_loop, int, load_f32, store_f32};

/// Arguments `[logits, labels, out]`; `out` is one value (loss) or `rows·k` (grad).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SoftmaxXentKernel {
    pub symbol: String,
    pub comment: String,
    pub grad: bool,
    pub rows: usize,
    pub k: usize,
}

/// What every row needs: its first element index, label, max and Σ exp.
struct Row {
    base: Value,
    label: Value,
    max: Value,
    sum: Value,
}

impl SoftmaxXentKernel {
    fn call(b: &mut FunctionBuilder, f: FuncRef, x: Value) -> Value {
        let c = b.ins().call(f, &[x]);
        b.inst_results(c)[0]
    }

    fn row(
        &self,
        b: &mut FunctionBuilder,
        (z, labels, exp): (Value, Value, FuncRef),
        r: Value,
    ) -> Row {
        let base = b.ins().imul_imm_s(r, self.k as i64);
        let off = b.ins().ishl_imm_u(r, 2);
        let at = b.ins().iadd(labels, off);
        let label = b
            .ins()
            .load(I32, MemFlagsData::trusted().with_readonly(), at, 0);
        let label = b.ins().uextend(I64, label);
        let last = int(b, self.k - 1);
        let label = b.ins().umin(label, last);
        let max = b.declare_var(F32);
        let first = load_f32(b, z, base);
        b.def_var(max, first);
        let (zero, k) = (int(b, 0), int(b, self.k));
        counted_loop(b, zero, k, 1, false, &mut |b, j| {
            let at = b.ins().iadd(base, j);
            let v = load_f32(b, z, at);
            let cur = b.use_var(max);
            let gt = b.ins().fcmp(FloatCC::GreaterThan, v, cur);
            let next = b.ins().select(gt, v, cur);
            b.def_var(max, next);
        });
        let max = b.use_var(max);
        let sum = b.declare_var(F32);
        let z0 = b.ins().f32const(0.0);
        b.def_var(sum, z0);
        counted_loop(b, zero, k, 1, false, &mut |b, j| {
            let at = b.ins().iadd(base, j);
            let v = load_f32(b, z, at);
            let d = b.ins().fsub(v, max);
            let e = Self::call(b, exp, d);
            let cur = b.use_var(sum);
            let next = b.ins().fadd(cur, e);
            b.def_var(sum, next);
        });
        let sum = b.use_var(sum);
        Row {
            base,
            label,
            max,
            sum,
        }
    }
}

impl KernelSpec for SoftmaxXentKernel {
    fn symbol(&self) -> &str {
        &self.symbol
    }

    fn comment(&self) -> &str {
        &self.comment
    }

    fn validate(&self) -> Result<()> {
        if self.rows == 0 || self.k == 0 {
            return Err(self.invalid(format!("{} rows of {} logits", self.rows, self.k)));
        }
        if self.rows.saturating_mul(self.k) > u32::MAX as usize {
            return Err(self.invalid("more than 2^32 elements".into()));
        }
        Ok(())
    }

    fn emit_body(&self, b: &mut FunctionBuilder, env: &mut FuncEnv, p: [Value; 4]) -> Result<()> {
        let [args, _keys, begin, end] = p;
        let ptr = env.ptr_ty();
        let exp = env.helper(b.func, Helper::Expf)?;
        let (z, labels, out) = (
            arg_ptr(b, ptr, args, 0),
            arg_ptr(b, ptr, args, 1),
            arg_ptr(b, ptr, args, 2),
        );
        let n = b.ins().f32const(self.rows as f32);
        if self.grad {
            let (one, zero) = (b.ins().f32const(1.0), b.ins().f32const(0.0));
            counted_loop(b, begin, end, 1, true, &mut |b, r| {
                let row = self.row(b, (z, labels, exp), r);
                let (from, k) = (int(b, 0), int(b, self.k));
                counted_loop(b, from, k, 1, false, &mut |b, j| {
                    let at = b.ins().iadd(row.base, j);
                    let v = load_f32(b, z, at);
                    let d = b.ins().fsub(v, row.max);
                    let e = Self::call(b, exp, d);
                    let prob = b.ins().fdiv(e, row.sum);
                    let is_label = b.ins().icmp(IntCC::Equal, j, row.label);
                    let onehot = b.ins().select(is_label, one, zero);
                    let diff = b.ins().fsub(prob, onehot);
                    let g = b.ins().fdiv(diff, n);
                    store_f32(b, out, at, g);
                });
            });
        } else {
            // The loss is one sum over all rows in order: the launch has a
            // single range, which runs the whole batch.
            let ln = env.helper(b.func, Helper::Logf)?;
            counted_loop(b, begin, end, 1, true, &mut |b, _| {
                let loss = b.declare_var(F32);
                let z0 = b.ins().f32const(0.0);
                b.def_var(loss, z0);
                let (from, rows) = (int(b, 0), int(b, self.rows));
                counted_loop(b, from, rows, 1, false, &mut |b, r| {
                    let row = self.row(b, (z, labels, exp), r);
                    let log_sum = Self::call(b, ln, row.sum);
                    let lse = b.ins().fadd(log_sum, row.max);
                    let at = b.ins().iadd(row.base, row.label);
                    let target = load_f32(b, z, at);
                    let term = b.ins().fsub(lse, target);
                    let cur = b.use_var(loss);
                    let next = b.ins().fadd(cur, term);
                    b.def_var(loss, next);
                });
                let total = b.use_var(loss);
                let mean = b.ins().fdiv(total, n);
                let zero = int(b, 0);
                store_f32(b, out, zero, mean);
            });
        }
        b.ins().return_(&[]);
        Ok(())
    }
}
