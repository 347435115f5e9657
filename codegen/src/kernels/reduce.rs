//! Per-channel reductions over `(outer, inner)` (BatchNorm statistics).
//!
//! ```text
//! for c in begin..end                (runtime channel range: thread split by channel)
//!   acc64 = 0.0
//!   for outer in 0..O
//!     row = sum over i of value(e, c)  in f32, fixed order (below)
//!     acc64 += row as f64
//!   out[c] = (acc64 * scale) as f32   for every sum output
//! ```
//! Row order: vector `j` (elements `4j..4j+4` of the row) is added lane-wise
//! into `f32x4` accumulator `j % 4`; then `s = (a0 + a1) + (a2 + a3)`,
//! `row = (s0 + s1) + (s2 + s3)`, then the `INNER % 4` tail elements are added
//! one by one. Each channel is reduced by exactly one thread, so the bits never
//! depend on the thread split. f32 partial sums are at most `INNER` long and
//! the across-rows sum is f64, which keeps the error small for large batches.
//!
//! Needed BN sums: `sum x`, `sum (x - mean)^2`, `sum dy`, `sum dy*(x - mean)`
//! (several sums of one pass share one kernel and one read of the inputs).

use cranelift_codegen::ir::types::{F32X4, F64, I64};
use cranelift_codegen::ir::{InstBuilder, MemFlagsData, Value};
use cranelift_frontend::{FunctionBuilder, Variable};

use super::expr::{BufId, Dims, ExprGraph, ExprId};
use super::expr_to_clif::{counted_loop, emit_row, ChanMode, Chunk, ExprEmitter};
use super::jit::{FuncEnv, KernelSpec, Result};

/// `buf[c] = scale * sum over (outer, i) of value`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SumOutput {
    pub buf: BufId,
    pub value: ExprId,
    /// Applied in f64 before rounding (e.g. `1/N` to get a mean).
    pub scale: f64,
}

/// A per-channel reduction kernel; its range arguments are channels.
#[derive(Clone, Debug)]
pub struct ReduceKernel {
    pub symbol: String,
    pub comment: String,
    pub dims: Dims,
    pub graph: ExprGraph,
    pub sums: Vec<SumOutput>,
}

impl ReduceKernel {
    pub fn new(symbol: &str, comment: &str, dims: Dims, graph: ExprGraph) -> Self {
        Self {
            symbol: symbol.into(),
            comment: comment.into(),
            dims,
            graph,
            sums: vec![],
        }
    }

    /// Adds `buf[c] = scale * sum value`.
    pub fn sum(mut self, buf: BufId, value: ExprId, scale: f64) -> Self {
        self.sums.push(SumOutput { buf, value, scale });
        self
    }

    fn roots(&self) -> Vec<ExprId> {
        self.sums.iter().map(|s| s.value).collect()
    }
}

impl KernelSpec for ReduceKernel {
    fn symbol(&self) -> &str {
        &self.symbol
    }

    fn comment(&self) -> &str {
        &self.comment
    }

    fn validate(&self) -> Result<()> {
        let d = self.dims;
        if d.outer == 0 || d.chans == 0 || d.inner == 0 {
            return Err(self.invalid(format!("empty dims {d:?}")));
        }
        if d.len() > u32::MAX as usize {
            return Err(self.invalid("more than 2^32 elements".into()));
        }
        if self.sums.is_empty() {
            return Err(self.invalid("no sums".into()));
        }
        let live = self.graph.live(&self.roots());
        let (elem, chan) = self.graph.buffers(&live);
        for (k, s) in self.sums.iter().enumerate() {
            if s.value.0 as usize >= self.graph.nodes().len() {
                return Err(self.invalid(format!("sum {s:?} names no node")));
            }
            if elem.contains(&s.buf)
                || chan.contains(&s.buf)
                || self.sums[..k].iter().any(|t| t.buf == s.buf)
            {
                return Err(self.invalid(format!(
                    "sum output {:?} is also read or written twice",
                    s.buf
                )));
            }
        }
        Ok(())
    }

    fn emit_body(&self, b: &mut FunctionBuilder, env: &mut FuncEnv, p: [Value; 4]) -> Result<()> {
        let ptr_ty = env.ptr_ty();
        let [args, keys, begin, end] = p;
        let Dims {
            outer,
            chans,
            inner,
        } = self.dims;
        let nvec = inner / 4;
        let out_bufs: Vec<BufId> = self.sums.iter().map(|s| s.buf).collect();
        let mut em = ExprEmitter::new(
            b,
            &self.graph,
            &self.roots(),
            &out_bufs,
            ChanMode::PerRow,
            ptr_ty,
            [args, keys],
        );
        let sums = &self.sums;
        counted_loop(b, begin, end, 1, true, &mut |b, c| {
            em.begin_row(b, c);
            let acc64: Vec<Variable> = sums.iter().map(|_| b.declare_var(F64)).collect();
            let z64 = b.ins().f64const(0.0);
            for v in &acc64 {
                b.def_var(*v, z64);
            }
            let zero = b.ins().iconst(I64, 0);
            let n_outer = b.ins().iconst(I64, outer as i64);
            counted_loop(b, zero, n_outer, 1, false, &mut |b, o| {
                let a = b.ins().imul_imm_s(o, (chans * inner) as i64);
                let c_off = b.ins().imul_imm_s(c, inner as i64);
                let row_e = b.ins().iadd(a, c_off);
                let acc: Vec<[Variable; 4]> = sums
                    .iter()
                    .map(|_| [0; 4].map(|_| b.declare_var(F32X4)))
                    .collect();
                if nvec > 0 {
                    let z = b.ins().f32const(0.0);
                    let z = b.ins().splat(F32X4, z);
                    for v in acc.iter().flatten() {
                        b.def_var(*v, z);
                    }
                }
                let mut tails: Vec<Vec<Value>> = vec![vec![]; sums.len()];
                emit_row(
                    b,
                    row_e,
                    inner,
                    &mut |b: &mut FunctionBuilder, chunks: &[Chunk]| {
                        let vals = em.eval_group(b, chunks, &[]);
                        for (s, sum) in sums.iter().enumerate() {
                            for (k, ch) in chunks.iter().enumerate() {
                                let v = vals[sum.value.0 as usize][k].expect("sum value");
                                if ch.scalar {
                                    tails[s].push(b.ins().extractlane(v, 0));
                                } else {
                                    let a = b.use_var(acc[s][k]);
                                    let n = b.ins().fadd(a, v);
                                    b.def_var(acc[s][k], n);
                                }
                            }
                        }
                    },
                );
                for (s, tail) in tails.iter().enumerate() {
                    let mut row = if nvec > 0 {
                        let a: Vec<Value> = acc[s].iter().map(|v| b.use_var(*v)).collect();
                        let s01 = b.ins().fadd(a[0], a[1]);
                        let s23 = b.ins().fadd(a[2], a[3]);
                        let q = b.ins().fadd(s01, s23);
                        let l: Vec<Value> = (0..4).map(|i| b.ins().extractlane(q, i)).collect();
                        let l01 = b.ins().fadd(l[0], l[1]);
                        let l23 = b.ins().fadd(l[2], l[3]);
                        b.ins().fadd(l01, l23)
                    } else {
                        b.ins().f32const(0.0)
                    };
                    for t in tail {
                        row = b.ins().fadd(row, *t);
                    }
                    let r64 = b.ins().fpromote(F64, row);
                    let a = b.use_var(acc64[s]);
                    let n = b.ins().fadd(a, r64);
                    b.def_var(acc64[s], n);
                }
            });
            for (s, sum) in sums.iter().enumerate() {
                let a = b.use_var(acc64[s]);
                let k = b.ins().f64const(sum.scale);
                let r = b.ins().fmul(a, k);
                let r = b.ins().fdemote(cranelift_codegen::ir::types::F32, r);
                let off = b.ins().ishl_imm_u(c, 2);
                let addr = b.ins().iadd(em.buf(sum.buf), off);
                b.ins().store(MemFlagsData::trusted(), r, addr, 0);
            }
        });
        b.ins().return_(&[]);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::expr::testing::{assert_bits_eq, check_guard, guarded};
    use super::super::expr::{KeySlot, MaskFactor};
    use super::super::jit::{CompiledModule, JitOptions, KernelFn, KernelModule};
    use super::super::parallel::ThreadPool;
    use super::*;
    use dropjit_graph::mask;

    impl ReduceKernel {
        /// Scalar reference with exactly the summation order of the JIT.
        fn eval_reference(
            &self,
            bufs: &mut [Vec<f32>],
            keys: &[u64],
            chan_range: std::ops::Range<usize>,
        ) {
            let Dims {
                outer,
                chans,
                inner,
            } = self.dims;
            let nvec = inner / 4;
            for c in chan_range {
                let mut acc64 = vec![0f64; self.sums.len()];
                for o in 0..outer {
                    let vals: Vec<Vec<f32>> = (0..inner)
                        .map(|i| {
                            let e = (o * chans + c) * inner + i;
                            let view = &*bufs;
                            self.graph.eval_scalar(
                                &|b: BufId, k: usize| view[b.0 as usize][k],
                                keys,
                                e,
                                c,
                            )
                        })
                        .collect();
                    for (s, sum) in self.sums.iter().enumerate() {
                        let v = |i: usize| vals[i][sum.value.0 as usize];
                        let mut acc = [[0f32; 4]; 4];
                        for j in 0..nvec {
                            for (l, a) in acc[j % 4].iter_mut().enumerate() {
                                *a += v(4 * j + l);
                            }
                        }
                        let mut row = if nvec > 0 {
                            let q: Vec<f32> = (0..4)
                                .map(|l| (acc[0][l] + acc[1][l]) + (acc[2][l] + acc[3][l]))
                                .collect();
                            (q[0] + q[1]) + (q[2] + q[3])
                        } else {
                            0.0
                        };
                        for i in nvec * 4..inner {
                            row += v(i);
                        }
                        acc64[s] += row as f64;
                    }
                }
                for (s, sum) in self.sums.iter().enumerate() {
                    bufs[sum.buf.0 as usize][c] = (acc64[s] * sum.scale) as f32;
                }
            }
        }
    }

    const DIMS: [(usize, usize, usize); 10] = [
        (1, 1, 1),
        (1, 1, 3),
        (2, 3, 5),
        (3, 2, 17),
        (2, 1, 37),
        (1, 5, 16),
        (4, 3, 1),
        (2, 3, 33),
        (5, 2, 64),
        (3, 3, 49),
    ];

    fn compile(k: &ReduceKernel) -> (CompiledModule, KernelFn) {
        let mut m = KernelModule::with_options(JitOptions {
            verify: true,
            ..JitOptions::default()
        })
        .unwrap();
        let h = m.add_kernels(&[k]).unwrap()[0];
        let c = m.finalize().unwrap();
        let f = c.kernel(h);
        (c, f)
    }

    /// Buffers: 0 = x, 1 = dy (elementwise), 2 = mean (per channel), 3.. sums.
    fn bufs(d: Dims, n_sums: usize, seed: u64) -> Vec<Vec<f32>> {
        let mut v = vec![
            guarded(d.len(), seed),
            guarded(d.len(), seed + 1),
            guarded(d.chans, seed + 2),
        ];
        for s in 0..n_sums {
            v.push(guarded(d.chans, seed + 3 + s as u64));
        }
        v
    }

    fn run(
        f: KernelFn,
        b: &mut [Vec<f32>],
        keys: &[u64],
        c: usize,
        pool: Option<(&ThreadPool, usize)>,
    ) {
        let args: Vec<*mut f32> = b.iter_mut().map(|v| v.as_mut_ptr()).collect();
        unsafe {
            match pool {
                None => f(args.as_ptr(), keys.as_ptr(), 0, c as i64),
                Some((p, t)) => p.run_kernel(f, args.as_ptr(), keys.as_ptr(), c as i64, t),
            }
        }
    }

    /// sum x / N (mean), sum (x-mean)^2, sum dy, sum dy*(x-mean), sum of a
    /// dropout-masked dy.
    fn bn_sums(d: Dims) -> ReduceKernel {
        let mut g = ExprGraph::new();
        let x = g.load(BufId(0));
        let dy = g.load(BufId(1));
        let mean = g.chan_load(BufId(2));
        let xc = g.sub(x, mean);
        let sq = g.mul(xc, xc);
        let dxc = g.mul(dy, xc);
        let f = MaskFactor {
            key: KeySlot(0),
            threshold: mask::keep_threshold(0.4),
        };
        let mdy = g.drop_mask(&[f], 3, 1.25, dy);
        let n = (d.outer * d.inner) as f64;
        ReduceKernel::new(
            "bn1_sums",
            "bn1 stats: sum x, sum (x-mean)^2, sum dy, sum dy*(x-mean)",
            d,
            g,
        )
        .sum(BufId(3), x, 1.0 / n)
        .sum(BufId(4), sq, 1.0)
        .sum(BufId(5), dy, 1.0)
        .sum(BufId(6), dxc, 1.0)
        .sum(BufId(7), mdy, 1.0)
    }

    #[test]
    fn bn_sums_match_reference_bit_exact() {
        let keys = [mask::mask_key(2, 3, 4, mask::Stream::F)];
        for (s, &(o, c, i)) in DIMS.iter().enumerate() {
            let d = Dims::new(o, c, i);
            let k = bn_sums(d);
            let (_code, f) = compile(&k);
            let mut got = bufs(d, 5, s as u64);
            let mut want = got.clone();
            run(f, &mut got, &keys, c, None);
            k.eval_reference(&mut want, &keys, 0..c);
            for (b, (g, w)) in got.iter().zip(&want).enumerate() {
                check_guard(g);
                assert_bits_eq(g, w, &format!("dims {d:?} buf {b}"));
            }
        }
    }

    #[test]
    fn sums_are_close_to_f64_sums() {
        let d = Dims::new(64, 3, 999);
        let k = bn_sums(d);
        let (_code, f) = compile(&k);
        let mut b = bufs(d, 5, 77);
        run(
            f,
            &mut b,
            &[mask::mask_key(1, 1, 1, mask::Stream::F)],
            d.chans,
            None,
        );
        for c in 0..d.chans {
            let (mut sx, mut sdy, mut sabs) = (0f64, 0f64, 0f64);
            for o in 0..d.outer {
                for i in 0..d.inner {
                    let e = (o * d.chans + c) * d.inner + i;
                    sx += b[0][e] as f64;
                    sdy += b[1][e] as f64;
                    sabs += (b[0][e] as f64).abs() + (b[1][e] as f64).abs();
                }
            }
            let n = (d.outer * d.inner) as f64;
            assert!(
                (b[3][c] as f64 - sx / n).abs() <= 1e-6 * sabs / n,
                "mean c{c}"
            );
            assert!((b[5][c] as f64 - sdy).abs() <= 1e-6 * sabs, "sum dy c{c}");
        }
    }

    #[test]
    fn channel_split_is_bit_identical() {
        let pool = ThreadPool::new(2);
        let keys = [mask::mask_key(9, 9, 9, mask::Stream::F)];
        for &(o, c, i) in &[(3, 5, 37), (2, 2, 16), (7, 3, 1)] {
            let d = Dims::new(o, c, i);
            let k = bn_sums(d);
            let (_code, f) = compile(&k);
            let base = bufs(d, 5, 5);
            let mut one = base.clone();
            run(f, &mut one, &keys, c, Some((&pool, 1)));
            for t in [2, 3] {
                let mut two = base.clone();
                run(f, &mut two, &keys, c, Some((&pool, t)));
                for (g, w) in two.iter().zip(&one) {
                    assert_bits_eq(g, w, "threads");
                }
            }
        }
    }

    #[test]
    fn invalid_reductions_are_rejected() {
        let d = Dims::new(2, 2, 2);
        let mut g = ExprGraph::new();
        let x = g.load(BufId(0));
        assert!(ReduceKernel::new("r", "r", d, g.clone())
            .validate()
            .is_err());
        assert!(ReduceKernel::new("r", "r", d, g.clone())
            .sum(BufId(0), x, 1.0)
            .validate()
            .is_err());
        assert!(ReduceKernel::new("r", "r", d, g.clone())
            .sum(BufId(1), x, 1.0)
            .sum(BufId(1), x, 1.0)
            .validate()
            .is_err());
        assert!(ReduceKernel::new("r", "r", d, g)
            .sum(BufId(1), x, 1.0)
            .validate()
            .is_ok());
    }
}
