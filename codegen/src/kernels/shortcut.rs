//! The option-A ResNet shortcut (strided subsampling plus zero channels on both
//! sides) and its gradient, as scalar Cranelift loops split by planes.
//!
//! ```text
//! forward, p in begin..end over the N·C_out output planes:
//!   c = p % C_out - pad;  y plane = x[n, c, h·s, w·s] if 0 <= c < C_in, else 0
//! gradient, p in begin..end over the N·C_in input planes:
//!   dx plane = 0;  dx[h·s, w·s] = dy[n, c + pad, h, w]
//! ```

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{InstBuilder, Value};
use cranelift_frontend::FunctionBuilder;

use super::jit::{FuncEnv, KernelSpec, Result};
use super::scalar::{arg_ptr, counted_loop, int, load_f32, mul_add, store_f32, zero_fill};

/// Shapes of one image: input `[c_in, in_h, in_w]`, output `[c_out, out_h, out_w]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ShortcutGeom {
    pub c_in: usize,
    pub in_h: usize,
    pub in_w: usize,
    pub c_out: usize,
    pub out_h: usize,
    pub out_w: usize,
    pub stride: usize,
}

impl ShortcutGeom {
    /// Zero channels before the copied ones.
    pub fn pad(&self) -> usize {
        (self.c_out - self.c_in) / 2
    }
    fn in_plane(&self) -> usize {
        self.in_h * self.in_w
    }
    fn out_plane(&self) -> usize {
        self.out_h * self.out_w
    }
}

/// Arguments: forward `[x, y]`, gradient `[dy, dx]`; `images` items.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ShortcutKernel {
    pub symbol: String,
    pub comment: String,
    pub grad: bool,
    pub images: usize,
    pub geom: ShortcutGeom,
}

impl ShortcutKernel {
    /// The strided copy of one plane: `to[to_b + f(h, w)] = from[from_b + g(h, w)]`
    /// over the output grid, forward or backward.
    fn copy_plane(&self, b: &mut FunctionBuilder, from: (Value, Value), to: (Value, Value)) {
        let g = self.geom;
        let zero = int(b, 0);
        let out_h = int(b, g.out_h);
        counted_loop(b, zero, out_h, 1, false, &mut |b, h| {
            let zero = int(b, 0);
            let out_w = int(b, g.out_w);
            counted_loop(b, zero, out_w, 1, false, &mut |b, w| {
                let dense = mul_add(b, h, g.out_w, w);
                let hs = b.ins().imul_imm_s(h, (g.stride * g.in_w) as i64);
                let strided = mul_add(b, w, g.stride, hs);
                let (src, dst) = if self.grad {
                    (dense, strided)
                } else {
                    (strided, dense)
                };
                let src = b.ins().iadd(from.1, src);
                let dst = b.ins().iadd(to.1, dst);
                let v = load_f32(b, from.0, src);
                store_f32(b, to.0, dst, v);
            })
        });
    }
}

impl KernelSpec for ShortcutKernel {
    fn symbol(&self) -> &str {
        &self.symbol
    }

    fn comment(&self) -> &str {
        &self.comment
    }

    fn validate(&self) -> Result<()> {
        let g = self.geom;
        if self.images == 0 || g.c_in == 0 || g.out_h == 0 || g.out_w == 0 || g.stride == 0 {
            return Err(self.invalid(format!("empty shortcut {g:?}")));
        }
        if g.c_out < g.c_in
            || (g.out_h - 1) * g.stride >= g.in_h
            || (g.out_w - 1) * g.stride >= g.in_w
        {
            return Err(self.invalid(format!("inconsistent shortcut {g:?}")));
        }
        let len = self.images * (g.c_in * g.in_plane()).max(g.c_out * g.out_plane());
        if len > u32::MAX as usize {
            return Err(self.invalid("more than 2^32 elements".into()));
        }
        Ok(())
    }

    fn emit_body(&self, b: &mut FunctionBuilder, env: &mut FuncEnv, p: [Value; 4]) -> Result<()> {
        let [args, _keys, begin, end] = p;
        let g = self.geom;
        let ptr = env.ptr_ty();
        let (src, dst) = (arg_ptr(b, ptr, args, 0), arg_ptr(b, ptr, args, 1));
        counted_loop(b, begin, end, 1, true, &mut |b, plane| {
            if self.grad {
                // plane = n·C_in + c  ->  dy plane n·C_out + c + pad
                let xb = b.ins().imul_imm_s(plane, g.in_plane() as i64);
                zero_fill(b, dst, xb, g.in_plane());
                let n = b.ins().udiv_imm_u(plane, g.c_in as i64);
                let extra = b.ins().imul_imm_s(n, (g.c_out - g.c_in) as i64);
                let dy_plane = b.ins().iadd(plane, extra);
                let dy_plane = b.ins().iadd_imm_s(dy_plane, g.pad() as i64);
                let yb = b.ins().imul_imm_s(dy_plane, g.out_plane() as i64);
                self.copy_plane(b, (src, yb), (dst, xb));
            } else {
                // plane = n·C_out + c; the source channel is c - pad when in range.
                let yb = b.ins().imul_imm_s(plane, g.out_plane() as i64);
                let n = b.ins().udiv_imm_u(plane, g.c_out as i64);
                let c = b.ins().urem_imm_u(plane, g.c_out as i64);
                let ci = b.ins().iadd_imm_s(c, -(g.pad() as i64));
                let inside = b
                    .ins()
                    .icmp_imm_u(IntCC::UnsignedLessThan, ci, g.c_in as i64);
                let (copy, zero, join) = (b.create_block(), b.create_block(), b.create_block());
                b.ins().brif(inside, copy, &[], zero, &[]);
                b.switch_to_block(copy);
                let x_plane = mul_add(b, n, g.c_in, ci);
                let xb = b.ins().imul_imm_s(x_plane, g.in_plane() as i64);
                self.copy_plane(b, (src, xb), (dst, yb));
                b.ins().jump(join, &[]);
                b.switch_to_block(zero);
                zero_fill(b, dst, yb, g.out_plane());
                b.ins().jump(join, &[]);
                b.switch_to_block(join);
            }
        });
        b.ins().return_(&[]);
        Ok(())
    }
}
