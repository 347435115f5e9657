//! Building blocks of the scalar loop nests (average-pooling windows, the
//! option-A shortcut, softmax cross-entropy): buffer pointers from the `args`
//! array, f32 elements addressed by an i64 element index, counted loops with
//! runtime bounds and zero fills.
//!
//! These ops move little data next to the convolutions, so their loops stay
//! scalar and follow the reference interpreter's arithmetic order exactly.

use cranelift_codegen::ir::types::{F32, F32X4, I64};
use cranelift_codegen::ir::{InstBuilder, MemFlagsData, Type, Value};
use cranelift_frontend::FunctionBuilder;

pub(crate) use super::expr_to_clif::counted_loop;

/// Base pointer of buffer `BufId(i)`.
pub(crate) fn arg_ptr(b: &mut FunctionBuilder, ptr_ty: Type, args: Value, i: usize) -> Value {
    let flags = MemFlagsData::trusted().with_readonly().with_can_move();
    b.ins().load(ptr_ty, flags, args, (i * 8) as i32)
}

fn addr(b: &mut FunctionBuilder, base: Value, idx: Value) -> Value {
    let off = b.ins().ishl_imm_u(idx, 2);
    b.ins().iadd(base, off)
}

pub(crate) fn load_f32(b: &mut FunctionBuilder, base: Value, idx: Value) -> Value {
    let a = addr(b, base, idx);
    b.ins().load(F32, MemFlagsData::trusted(), a, 0)
}

pub(crate) fn store_f32(b: &mut FunctionBuilder, base: Value, idx: Value, v: Value) {
    let a = addr(b, base, idx);
    b.ins().store(MemFlagsData::trusted(), v, a, 0);
}

pub(crate) fn int(b: &mut FunctionBuilder, v: usize) -> Value {
    b.ins().iconst(I64, v as i64)
}

/// `base[start + i] = 0.0` for `i` in `0..len`: four lanes per store, then
/// the remaining elements one by one.
pub(crate) fn zero_fill(b: &mut FunctionBuilder, base: Value, start: Value, len: usize) {
    let zero = b.ins().f32const(0.0);
    let zeros = b.ins().splat(F32X4, zero);
    let body_end = b.ins().iadd_imm_s(start, (len / 4 * 4) as i64);
    counted_loop(b, start, body_end, 4, true, &mut |b, i| {
        let a = addr(b, base, i);
        b.ins()
            .store(MemFlagsData::new().with_notrap(), zeros, a, 0);
    });
    for k in len / 4 * 4..len {
        let i = b.ins().iadd_imm_s(start, k as i64);
        store_f32(b, base, i, zero);
    }
}

/// `a * b + c` on i64 element indices.
pub(crate) fn mul_add(b: &mut FunctionBuilder, a: Value, m: usize, c: Value) -> Value {
    let p = b.ins().imul_imm_s(a, m as i64);
    b.ins().iadd(p, c)
}
