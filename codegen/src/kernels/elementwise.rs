//! Fused elementwise loop nests.
//!
//! ```text
//! for outer in begin..end            (runtime range within 0..O: thread split)
//!   for c in 0..C
//!     for i in 0..INNER              (f32x4, 4x unrolled, then <=3 vectors, then <=3 scalars)
//!       e = (outer*C + c)*INNER + i
//!       out_k[e] = value_k(e, c)     for every output k
//! ```
//! With `INNER == 1` and `C > 1` the `c` loop is vectorised instead
//! (`ChanLoad` becomes a vector load), which keeps FC / BN1d layers fast.
//!
//! Aliasing: an output may be an input buffer (same `BufId`, or the caller
//! passes the same pointer twice): every group of chunks loads all its inputs
//! before its first store and touches only its own elements. Partially
//! overlapping buffers are not supported, nor writing a `ChanLoad` buffer.

use cranelift_codegen::ir::types::I64;
use cranelift_codegen::ir::{InstBuilder, Value};
use cranelift_frontend::FunctionBuilder;

use super::expr::{BufId, Dims, ExprGraph, ExprId};
use super::expr_to_clif::{counted_loop, emit_row, ChanMode, Chunk, ExprEmitter};
use super::jit::{FuncEnv, KernelSpec, Result};

/// One output stream: `buf[e] = value(e)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Output {
    pub buf: BufId,
    pub value: ExprId,
}

/// A fused elementwise kernel (see the module docs).
#[derive(Clone, Debug)]
pub struct ElementwiseKernel {
    pub symbol: String,
    pub comment: String,
    pub dims: Dims,
    pub graph: ExprGraph,
    pub outputs: Vec<Output>,
}

impl ElementwiseKernel {
    pub fn new(symbol: &str, comment: &str, dims: Dims, graph: ExprGraph) -> Self {
        Self {
            symbol: symbol.into(),
            comment: comment.into(),
            dims,
            graph,
            outputs: vec![],
        }
    }

    /// Adds an output `buf[e] = value`. `buf` may be a `Load` input (in place).
    pub fn output(mut self, buf: BufId, value: ExprId) -> Self {
        self.outputs.push(Output { buf, value });
        self
    }

    fn roots(&self) -> Vec<ExprId> {
        self.outputs.iter().map(|o| o.value).collect()
    }

    fn mode(&self) -> ChanMode {
        if self.dims.inner == 1 && self.dims.chans > 1 {
            ChanMode::PerElem
        } else {
            ChanMode::PerRow
        }
    }
}

impl KernelSpec for ElementwiseKernel {
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
        if self.outputs.is_empty() {
            return Err(self.invalid("no outputs".into()));
        }
        let live = self.graph.live(&self.roots());
        let (_, chan) = self.graph.buffers(&live);
        let mut seen = vec![];
        for o in &self.outputs {
            if o.value.0 as usize >= self.graph.nodes().len() {
                return Err(self.invalid(format!("output {o:?} names no node")));
            }
            if seen.contains(&o.buf) {
                return Err(self.invalid(format!("buffer {:?} written twice", o.buf)));
            }
            if chan.contains(&o.buf) {
                return Err(self.invalid(format!("output {:?} is also a ChanLoad input", o.buf)));
            }
            seen.push(o.buf);
        }
        Ok(())
    }

    fn emit_body(&self, b: &mut FunctionBuilder, env: &mut FuncEnv, p: [Value; 4]) -> Result<()> {
        let ptr_ty = env.ptr_ty();
        let [args, keys, begin, end] = p;
        let Dims { chans, inner, .. } = self.dims;
        let mode = self.mode();
        let out_bufs: Vec<BufId> = self.outputs.iter().map(|o| o.buf).collect();
        let mut em = ExprEmitter::new(
            b,
            &self.graph,
            &self.roots(),
            &out_bufs,
            mode,
            ptr_ty,
            [args, keys],
        );
        let stores: Vec<(BufId, ExprId)> = self.outputs.iter().map(|o| (o.buf, o.value)).collect();
        let on_group = |b: &mut FunctionBuilder, em: &mut ExprEmitter, chunks: &[Chunk]| {
            em.eval_group(b, chunks, &stores);
        };
        counted_loop(b, begin, end, 1, true, &mut |b, o| {
            let row0 = b.ins().imul_imm_s(o, (chans * inner) as i64);
            match mode {
                ChanMode::PerElem => {
                    emit_row(b, row0, chans, &mut |b, ch| on_group(b, &mut em, ch));
                }
                ChanMode::PerRow if chans == 1 => {
                    let c = b.ins().iconst(I64, 0);
                    em.begin_row(b, c);
                    emit_row(b, row0, inner, &mut |b, ch| on_group(b, &mut em, ch));
                }
                ChanMode::PerRow => {
                    let zero = b.ins().iconst(I64, 0);
                    let nc = b.ins().iconst(I64, chans as i64);
                    counted_loop(b, zero, nc, 1, false, &mut |b, c| {
                        let off = b.ins().imul_imm_s(c, inner as i64);
                        let row = b.ins().iadd(row0, off);
                        em.begin_row(b, c);
                        emit_row(b, row, inner, &mut |b, ch| on_group(b, &mut em, ch));
                    });
                }
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
    use super::super::jit::{
        fixed_isa, kernel_clif, ClifStage, CompiledModule, FuncHandle, JitOptions, KernelFn,
        KernelModule,
    };
    use super::super::parallel::ThreadPool;
    use super::*;
    use dropjit_graph::mask;

    impl ElementwiseKernel {
        /// Scalar reference over `outer_range` (the semantics the JIT must match
        /// bit for bit). Outputs are written after all node values of an element
        /// are computed, as the JIT does.
        fn eval_reference(
            &self,
            bufs: &mut [Vec<f32>],
            keys: &[u64],
            outer_range: std::ops::Range<usize>,
        ) {
            let Dims { chans, inner, .. } = self.dims;
            for o in outer_range {
                for c in 0..chans {
                    for i in 0..inner {
                        let e = (o * chans + c) * inner + i;
                        let v = {
                            let view = &*bufs;
                            self.graph.eval_scalar(
                                &|b: BufId, k: usize| view[b.0 as usize][k],
                                keys,
                                e,
                                c,
                            )
                        };
                        for out in &self.outputs {
                            bufs[out.buf.0 as usize][e] = v[out.value.0 as usize];
                        }
                    }
                }
            }
        }
    }

    /// Odd shapes: INNER not a multiple of 4 or 16, C = 1, O = 1, INNER = 1.
    const DIMS: [(usize, usize, usize); 12] = [
        (1, 1, 1),
        (1, 1, 3),
        (2, 3, 5),
        (3, 2, 17),
        (2, 1, 37),
        (1, 5, 16),
        (2, 4, 1),
        (3, 7, 1),
        (2, 3, 33),
        (1, 1, 64),
        (2, 2, 50),
        (3, 3, 49),
    ];

    fn compile(k: &ElementwiseKernel) -> (CompiledModule, KernelFn) {
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

    /// Buffers for a kernel: elementwise buffers get `len`, `chan` ones `C`.
    fn buffers(k: &ElementwiseKernel, n_bufs: usize, chan: &[u32], seed: u64) -> Vec<Vec<f32>> {
        (0..n_bufs as u32)
            .map(|b| {
                let n = if chan.contains(&b) {
                    k.dims.chans
                } else {
                    k.dims.len()
                };
                guarded(n, seed * 31 + b as u64)
            })
            .collect()
    }

    fn run_jit(
        f: KernelFn,
        bufs: &mut [Vec<f32>],
        keys: &[u64],
        outer: usize,
        pool: Option<(&ThreadPool, usize)>,
    ) {
        let args: Vec<*mut f32> = bufs.iter_mut().map(|b| b.as_mut_ptr()).collect();
        unsafe {
            match pool {
                None => f(args.as_ptr(), keys.as_ptr(), 0, outer as i64),
                Some((p, t)) => p.run_kernel(f, args.as_ptr(), keys.as_ptr(), outer as i64, t),
            }
        }
    }

    /// JIT vs reference, bit for bit, on every shape; returns nothing, panics on mismatch.
    fn check_against_reference(
        build: &dyn Fn(Dims) -> ElementwiseKernel,
        n_bufs: usize,
        chan: &[u32],
        keys: &[u64],
    ) {
        for (s, &(o, c, i)) in DIMS.iter().enumerate() {
            let k = build(Dims::new(o, c, i));
            let (_code, f) = compile(&k);
            let mut got = buffers(&k, n_bufs, chan, s as u64);
            let mut want = got.clone();
            run_jit(f, &mut got, keys, o, None);
            k.eval_reference(&mut want, keys, 0..o);
            for (b, (g, w)) in got.iter().zip(&want).enumerate() {
                check_guard(g);
                assert_bits_eq(g, w, &format!("{} dims {:?} buf {b}", k.symbol, k.dims));
            }
        }
    }

    /// y = relu(x * scale[c] + shift[c]); z = dropmask(y): buffers x=0,
    /// scale=1, shift=2, y=3, z=4.
    fn bn_relu_drop(dims: Dims, p: f64) -> ElementwiseKernel {
        let mut g = ExprGraph::new();
        let x = g.load(BufId(0));
        let s = g.chan_load(BufId(1));
        let t = g.chan_load(BufId(2));
        let xs = g.mul(x, s);
        let pre = g.add(xs, t);
        let y = g.relu(pre);
        let f = MaskFactor {
            key: KeySlot(0),
            threshold: mask::keep_threshold(p),
        };
        let z = g.drop_mask(&[f], 0, mask::keep_scale(&[p]) as f32, y);
        ElementwiseKernel::new("bn1_relu1_drop1", "bn1 -> relu1 -> drop1 (F mask)", dims, g)
            .output(BufId(3), y)
            .output(BufId(4), z)
    }

    #[test]
    fn pure_chain_matches_reference() {
        let build = |d: Dims| {
            let mut g = ExprGraph::new();
            let x = g.load(BufId(0));
            let w = g.load(BufId(1));
            let m = g.chan_load(BufId(2));
            let two = g.constant(2.0);
            let d1 = g.sub(x, m);
            let p = g.mul(d1, w);
            let q = g.div(p, two);
            let r = g.relu(q);
            let sq = g.mul(w, w);
            let sq = g.add(sq, two);
            let sq = g.sqrt(sq);
            let gm = g.positive_mask(x, sq);
            let out = g.add(r, gm);
            ElementwiseKernel::new("chain", "chain test", d, g)
                .output(BufId(3), out)
                .output(BufId(4), r)
        };
        check_against_reference(&build, 5, &[2], &[]);
    }

    #[test]
    fn bn_relu_dropout_matches_reference() {
        let keys = [mask::mask_key(7, 3, 1, mask::Stream::F)];
        for p in [0.0, 0.1, 0.5, 0.9] {
            check_against_reference(&|d| bn_relu_drop(d, p), 5, &[1, 2], &keys);
        }
    }

    #[test]
    #[allow(clippy::needless_range_loop)]
    fn mask_equals_is_kept_for_every_element() {
        // out = DropMask(1.0) with scale 1 is the 0/1 mask itself; two factors
        // (F ⊙ G) and a nonzero index base.
        let kf = mask::mask_key(11, 5, 2, mask::Stream::F);
        let kg = mask::mask_key(11, 5, 2, mask::Stream::G);
        let keys = [kf, kg];
        let (tf, tg) = (mask::keep_threshold(0.3), mask::keep_threshold(0.6));
        for &(o, c, i) in &DIMS {
            for base in [0u32, 12345, u32::MAX - 3] {
                let dims = Dims::new(o, c, i);
                let mut g = ExprGraph::new();
                let one = g.load(BufId(0));
                let f = MaskFactor {
                    key: KeySlot(0),
                    threshold: tf,
                };
                let gg = MaskFactor {
                    key: KeySlot(1),
                    threshold: tg,
                };
                let mf = g.drop_mask(&[f], base, 1.0, one);
                let mfg = g.drop_mask(&[f, gg], base, 1.0, one);
                let k = ElementwiseKernel::new("mask", "mask F and F*G", dims, g)
                    .output(BufId(1), mf)
                    .output(BufId(2), mfg);
                let (_code, func) = compile(&k);
                let n = dims.len();
                let mut bufs = vec![vec![1.0f32; n], vec![7.0; n], vec![7.0; n]];
                run_jit(func, &mut bufs, &keys, o, None);
                for e in 0..n {
                    let idx = (e as u32).wrapping_add(base);
                    let kf_ = mask::is_kept(kf, idx, tf);
                    let kg_ = mask::is_kept(kg, idx, tg);
                    assert_eq!(
                        bufs[1][e],
                        if kf_ { 1.0 } else { 0.0 },
                        "F dims {dims:?} e {e}"
                    );
                    assert_eq!(
                        bufs[2][e],
                        if kf_ && kg_ { 1.0 } else { 0.0 },
                        "FG dims {dims:?} e {e}"
                    );
                }
            }
        }
    }

    #[test]
    fn mask_product_with_combined_scale_matches_reference() {
        let keys = [
            mask::mask_key(1, 2, 3, mask::Stream::F),
            mask::mask_key(1, 2, 3, mask::Stream::G),
        ];
        let build = |d: Dims| {
            let mut g = ExprGraph::new();
            let dy = g.load(BufId(0));
            let y = g.load(BufId(1));
            let fs = [
                MaskFactor {
                    key: KeySlot(0),
                    threshold: mask::keep_threshold(0.2),
                },
                MaskFactor {
                    key: KeySlot(1),
                    threshold: mask::keep_threshold(0.25),
                },
            ];
            let b = g.drop_mask(&fs, 77, mask::keep_scale(&[0.2, 0.25]) as f32, dy);
            let dx = g.positive_mask(y, b);
            ElementwiseKernel::new("drop_bwd", "drop1' (F*G) -> relu1'", d, g).output(BufId(2), dx)
        };
        check_against_reference(&build, 3, &[], &keys);
    }

    #[test]
    fn in_place_output_matches_reference() {
        let keys = [mask::mask_key(3, 9, 4, mask::Stream::F)];
        let build = |d: Dims| {
            let mut g = ExprGraph::new();
            let x = g.load(BufId(0));
            let s = g.chan_load(BufId(1));
            let y = g.mul(x, s);
            let y = g.relu(y);
            let f = MaskFactor {
                key: KeySlot(0),
                threshold: mask::keep_threshold(0.5),
            };
            let z = g.drop_mask(&[f], 0, 2.0, y);
            // x is overwritten in place by z; y also goes to buffer 2.
            ElementwiseKernel::new("inplace", "in-place relu+drop", d, g)
                .output(BufId(0), z)
                .output(BufId(2), y)
        };
        check_against_reference(&build, 3, &[1], &keys);
    }

    #[test]
    fn aliased_pointers_in_two_slots() {
        // Same pointer passed as input slot 0 and output slot 1.
        let dims = Dims::new(3, 2, 23);
        let mut g = ExprGraph::new();
        let x = g.load(BufId(0));
        let c = g.constant(-1.5);
        let y = g.add(x, c);
        let y = g.relu(y);
        let k = ElementwiseKernel::new("alias", "alias", dims, g).output(BufId(1), y);
        let (_code, f) = compile(&k);
        let mut v = guarded(dims.len(), 5);
        let mut want = vec![v.clone(), v.clone()];
        k.eval_reference(&mut want, &[], 0..dims.outer);
        let args = [v.as_mut_ptr(), v.as_mut_ptr()];
        unsafe { f(args.as_ptr(), [].as_ptr(), 0, dims.outer as i64) };
        assert_bits_eq(&v, &want[1], "aliased");
    }

    #[test]
    fn one_and_two_threads_are_bit_identical() {
        let pool = ThreadPool::new(2);
        let keys = [mask::mask_key(5, 1, 0, mask::Stream::F)];
        for &(o, c, i) in &[(1, 3, 5), (2, 3, 17), (7, 2, 33), (5, 4, 1)] {
            let k = bn_relu_drop(Dims::new(o, c, i), 0.3);
            let (_code, f) = compile(&k);
            let base = buffers(&k, 5, &[1, 2], 9);
            let mut runs = vec![];
            for t in [1, 2, 3] {
                let mut b = base.clone();
                run_jit(f, &mut b, &keys, o, Some((&pool, t)));
                runs.push(b);
            }
            let mut want = base.clone();
            k.eval_reference(&mut want, &keys, 0..o);
            for r in &runs {
                for (g, w) in r.iter().zip(&want) {
                    assert_bits_eq(g, w, "threads");
                }
            }
        }
    }

    #[test]
    fn partial_outer_range_touches_only_its_rows() {
        let keys = [mask::mask_key(5, 1, 0, mask::Stream::F)];
        let k = bn_relu_drop(Dims::new(5, 3, 7), 0.3);
        let (_code, f) = compile(&k);
        let base = buffers(&k, 5, &[1, 2], 4);
        let mut got = base.clone();
        let args: Vec<*mut f32> = got.iter_mut().map(|b| b.as_mut_ptr()).collect();
        unsafe { f(args.as_ptr(), keys.as_ptr(), 1, 3) };
        let mut want = base.clone();
        k.eval_reference(&mut want, &keys, 1..3);
        for (g, w) in got.iter().zip(&want) {
            assert_bits_eq(g, w, "range 1..3");
        }
    }

    #[test]
    fn jit_code_calls_parallel_for_helper() {
        use super::super::jit::Helper;
        use cranelift_codegen::ir::{types, AbiParam, InstBuilder, Signature};
        let dims = Dims::new(6, 3, 19);
        let keys = [mask::mask_key(5, 2, 0, mask::Stream::F)];
        let k = bn_relu_drop(dims, 0.4);
        let mut m = KernelModule::with_options(JitOptions {
            verify: true,
            ..JitOptions::default()
        })
        .unwrap();
        let kh = m.add_kernels(&[&k]).unwrap()[0];
        // step(args, keys) = dropjit_parallel_for(kernel, args, keys, 6, 2)
        let ptr = m.isa().pointer_type();
        let mut sig = Signature::new(m.isa().default_call_conv());
        sig.params = vec![AbiParam::new(ptr), AbiParam::new(ptr)];
        let step = m
            .add_function(
                "step",
                "step: parallel bn1_relu1_drop1",
                sig,
                &mut |b, env| {
                    let entry = b.current_block().unwrap();
                    let p = b.block_params(entry).to_vec();
                    let pf = env.helper(b.func, Helper::ParallelFor)?;
                    let kr = env.func(b.func, kh)?;
                    let kaddr = b.ins().func_addr(env.ptr_ty(), kr);
                    let total = b.ins().iconst(types::I64, dims.outer as i64);
                    let nt = b.ins().iconst(env.ptr_ty(), 2);
                    b.ins().call(pf, &[kaddr, p[0], p[1], total, nt]);
                    b.ins().return_(&[]);
                    Ok(())
                },
            )
            .unwrap();
        let code = m.finalize().unwrap();
        let step: unsafe extern "C" fn(*const *mut f32, *const u64) =
            unsafe { std::mem::transmute(code.ptr(step)) };
        let _ = FuncHandle(0);
        let mut got = buffers(&k, 5, &[1, 2], 3);
        let mut want = got.clone();
        let args: Vec<*mut f32> = got.iter_mut().map(|b| b.as_mut_ptr()).collect();
        unsafe { step(args.as_ptr(), keys.as_ptr()) };
        k.eval_reference(&mut want, &keys, 0..dims.outer);
        for (g, w) in got.iter().zip(&want) {
            assert_bits_eq(g, w, "via JIT step");
        }
    }

    #[test]
    fn invalid_kernels_are_rejected() {
        let d = Dims::new(1, 2, 3);
        let mut g = ExprGraph::new();
        let x = g.load(BufId(0));
        let s = g.chan_load(BufId(1));
        let y = g.mul(x, s);
        let k = ElementwiseKernel::new("bad", "bad", d, g.clone()).output(BufId(1), y);
        assert!(k.validate().is_err(), "writing a ChanLoad buffer");
        let k = ElementwiseKernel::new("bad", "bad", d, g.clone())
            .output(BufId(2), y)
            .output(BufId(2), x);
        assert!(k.validate().is_err(), "same output twice");
        let k =
            ElementwiseKernel::new("bad", "bad", Dims::new(0, 1, 1), g.clone()).output(BufId(2), y);
        assert!(k.validate().is_err(), "empty");
        let k = ElementwiseKernel::new("bad", "bad", d, g);
        assert!(k.validate().is_err(), "no outputs");
    }

    #[test]
    fn clif_snapshot_bn_relu_drop_fixed_isa() {
        let k = bn_relu_drop(Dims::new(2, 3, 37), 0.5);
        let isa = fixed_isa().unwrap();
        let text = kernel_clif(&k, &*isa, ClifStage::Built).unwrap();
        assert!(text.starts_with("; bn1 -> relu1 -> drop1 (F mask)\n"));
        assert!(!text.contains("fmax") && !text.contains("select"));
        // The optimised form must also pass the verifier for the fixed ISA.
        kernel_clif(&k, &*isa, ClifStage::Optimized).unwrap();
        insta::with_settings!({prepend_module_to_snapshot => false}, {
            insta::assert_snapshot!("bn_relu_drop_clif_x86_64", text);
        });
    }
}
