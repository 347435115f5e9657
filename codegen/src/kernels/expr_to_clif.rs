//! Cranelift IR for [`ExprGraph`]s ([`ExprEmitter`]) over groups of `f32x4`
//! chunks, plus the loop helpers shared by the elementwise and reduction
//! kernels.
//!
//! Every value is an `f32x4`. A *vector* chunk covers 4 consecutive elements
//! (unaligned `load.f32x4`); a *scalar* chunk covers one element, loaded with a
//! scalar load and moved into lane 0 (`scalar_to_vector`), so the tail runs the
//! very same instruction sequence as the vector body and agrees bit for bit.
//!
//! Values are computed at the loosest level that allows it: constants once at
//! function entry, per-channel values (`ChanLoad` and what derives from it only)
//! once per row, the rest per chunk. Within a group (up to 4 chunks) nodes are
//! emitted node-major, so the chunks form independent chains (ILP), and all
//! loads of a group precede all of its stores (what makes exact in-place
//! aliasing safe).

use std::collections::HashMap;

use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::types::{F32, F32X4, I32, I32X4, I64};
use cranelift_codegen::ir::{ConstantData, InstBuilder, MemFlagsData, Type, Value};
use cranelift_frontend::FunctionBuilder;

use super::expr::{BufId, ExprGraph, ExprId, KeySlot, Node};

/// `lowbias32` multipliers (see `mask::lowbias32`; tested to agree).
const LOWBIAS_M1: u32 = 0x7FEB_352D;
const LOWBIAS_M2: u32 = 0x846C_A68B;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Level {
    Kernel,
    Row,
    Elem,
}

/// Where `ChanLoad` reads: once per row (rows are `(outer, c)`, vectorised over
/// `i`), or per element (`inner == 1`: rows are `outer`, vectorised over `c`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ChanMode {
    PerRow,
    PerElem,
}

/// Index within the row of a group start: a constant or a loop variable.
#[derive(Clone, Copy, Debug)]
pub(crate) enum RowIndex {
    Const(i64),
    Var(Value),
}

/// One chunk of a group: elements `e + off .. e + off + (1 or 4)`; `i` is the
/// index within the row of the group start (used by `ChanMode::PerElem`).
/// All chunks of a group share `e` and `i`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Chunk {
    pub e: Value,
    pub i: RowIndex,
    pub off: u32,
    pub scalar: bool,
}

/// Per-group memo of constants and addresses (keeps the CLIF small).
#[derive(Default)]
struct GroupCache {
    /// i32 constants (scalar) and their i32x4 splats.
    ints: HashMap<(u32, bool), Value>,
    /// `ptr + 4 * index` per (pointer, use row index instead of e).
    addr: HashMap<(Value, bool), Value>,
    /// `splat(e as i32 + index_base)` per index base.
    idx: HashMap<u32, Value>,
    /// Mask bits (shifted right by one) per (key, index base, chunk).
    bits: HashMap<(KeySlot, u32, usize), Value>,
    row_i: Option<Value>,
    /// f32x4 splats of constants, by bit pattern.
    floats: HashMap<u32, Value>,
}

impl GroupCache {
    fn int(&mut self, b: &mut FunctionBuilder, v: u32, splat: bool) -> Value {
        if let Some(x) = self.ints.get(&(v, splat)) {
            return *x;
        }
        let x = if splat {
            let s = self.int(b, v, false);
            b.ins().splat(I32X4, s)
        } else {
            b.ins().iconst(I32, v as i32 as i64)
        };
        self.ints.insert((v, splat), x);
        x
    }

    fn addr(&mut self, b: &mut FunctionBuilder, ptr: Value, ch: &Chunk, use_i: bool) -> Value {
        if let Some(a) = self.addr.get(&(ptr, use_i)) {
            return *a;
        }
        let idx = if use_i {
            match ch.i {
                RowIndex::Var(v) => v,
                RowIndex::Const(c) => *self.row_i.get_or_insert_with(|| b.ins().iconst(I64, c)),
            }
        } else {
            ch.e
        };
        let off = b.ins().ishl_imm_u(idx, 2);
        let a = b.ins().iadd(ptr, off);
        self.addr.insert((ptr, use_i), a);
        a
    }
}

fn vec_flags() -> MemFlagsData {
    // Not `aligned`: rows start at arbitrary element offsets (and x64 would
    // otherwise fold the load into an SSE operand that requires alignment).
    MemFlagsData::new().with_notrap()
}

fn scalar_flags() -> MemFlagsData {
    MemFlagsData::trusted()
}

/// Emits one [`ExprGraph`]'s values inside a kernel's loops: the prologue
/// (`new`), per-row values (`begin_row`), then each group of chunks
/// (`eval_group`).
pub(crate) struct ExprEmitter<'g> {
    g: &'g ExprGraph,
    live: Vec<bool>,
    level: Vec<Level>,
    mode: ChanMode,
    bufs: HashMap<BufId, Value>,
    keys: HashMap<KeySlot, (Value, Value)>,
    /// Kernel- and row-level node values.
    fixed: Vec<Option<Value>>,
    zero: Value,
}

impl<'g> ExprEmitter<'g> {
    /// Emits the prologue at the current block: buffer pointers of the live
    /// nodes and of `extra_bufs`, mask keys, constants, kernel-level nodes.
    pub fn new(
        b: &mut FunctionBuilder,
        g: &'g ExprGraph,
        roots: &[ExprId],
        extra_bufs: &[BufId],
        mode: ChanMode,
        ptr_ty: Type,
        [args, keys]: [Value; 2],
    ) -> Self {
        let live = g.live(roots);
        let mut level = Vec::with_capacity(g.nodes().len());
        for n in g.nodes() {
            let l = match n {
                Node::Const(_) => Level::Kernel,
                Node::ChanLoad(_) if mode == ChanMode::PerRow => Level::Row,
                Node::Load(_) | Node::ChanLoad(_) | Node::DropMask { .. } => Level::Elem,
                _ => n
                    .operands()
                    .iter()
                    .map(|o| level[o.0 as usize])
                    .max()
                    .unwrap_or(Level::Kernel),
            };
            level.push(l);
        }
        let zero = b.ins().f32const(0.0);
        let zero = b.ins().splat(F32X4, zero);
        let mut me = Self {
            g,
            live,
            level,
            mode,
            bufs: HashMap::new(),
            keys: HashMap::new(),
            fixed: vec![None; g.nodes().len()],
            zero,
        };
        let (elem, chan) = g.buffers(&me.live);
        let mut all: Vec<BufId> = elem
            .into_iter()
            .chain(chan)
            .chain(extra_bufs.iter().copied())
            .collect();
        all.sort();
        all.dedup();
        let ptr_flags = MemFlagsData::trusted().with_readonly().with_can_move();
        for buf in all {
            let p = b.ins().load(
                ptr_ty,
                ptr_flags,
                args,
                (buf.0 as i32) * ptr_ty.bytes() as i32,
            );
            me.bufs.insert(buf, p);
        }
        let mut slots: Vec<KeySlot> = vec![];
        for (n, _) in g.nodes().iter().zip(&me.live).filter(|(_, l)| **l) {
            if let Node::DropMask { factors, .. } = n {
                slots.extend(factors.iter().filter(|f| f.threshold > 0).map(|f| f.key));
            }
        }
        slots.sort();
        slots.dedup();
        for s in slots {
            let k = b.ins().load(I64, ptr_flags, keys, (s.0 * 8) as i32);
            let lo = b.ins().ireduce(I32, k);
            let hi = b.ins().ushr_imm_u(k, 32);
            let hi = b.ins().ireduce(I32, hi);
            let lo = b.ins().splat(I32X4, lo);
            let hi = b.ins().splat(I32X4, hi);
            me.keys.insert(s, (lo, hi));
        }
        me.eval_fixed(b, Level::Kernel, None);
        me
    }

    pub fn buf(&self, b: BufId) -> Value {
        self.bufs[&b]
    }

    /// Emits the row-level values for channel `c` (i64) at the current block.
    pub fn begin_row(&mut self, b: &mut FunctionBuilder, c: Value) {
        self.eval_fixed(b, Level::Row, Some(c));
    }

    fn splat_f32(b: &mut FunctionBuilder, v: f32) -> Value {
        let c = b.ins().f32const(v);
        b.ins().splat(F32X4, c)
    }

    fn eval_fixed(&mut self, b: &mut FunctionBuilder, lvl: Level, c: Option<Value>) {
        for idx in 0..self.g.nodes().len() {
            if !self.live[idx] || self.level[idx] != lvl {
                continue;
            }
            let v = match self.g.nodes()[idx].clone() {
                Node::Const(x) => Self::splat_f32(b, x),
                Node::ChanLoad(buf) => {
                    let c = c.expect("row level needs a channel");
                    let off = b.ins().ishl_imm_u(c, 2);
                    let addr = b.ins().iadd(self.bufs[&buf], off);
                    let x = b.ins().load(F32, scalar_flags(), addr, 0);
                    b.ins().splat(F32X4, x)
                }
                n => {
                    let ops: Vec<Value> = n
                        .operands()
                        .iter()
                        .map(|o| self.fixed[o.0 as usize].expect("operand not computed"))
                        .collect();
                    self.arith(b, &n, &ops)
                }
            };
            self.fixed[idx] = Some(v);
        }
    }

    /// Pure arithmetic nodes (no loads, no masks).
    fn arith(&mut self, b: &mut FunctionBuilder, n: &Node, o: &[Value]) -> Value {
        match n {
            Node::Add(..) => b.ins().fadd(o[0], o[1]),
            Node::Sub(..) => b.ins().fsub(o[0], o[1]),
            Node::Mul(..) => b.ins().fmul(o[0], o[1]),
            Node::Div(..) => b.ins().fdiv(o[0], o[1]),
            Node::Sqrt(..) => b.ins().sqrt(o[0]),
            Node::Relu(..) => self.positive(b, o[0], o[0]),
            Node::PositiveMask { .. } => self.positive(b, o[0], o[1]),
            other => unreachable!("not an arithmetic node: {other:?}"),
        }
    }

    /// `x` where `cond > 0`, else +0: compare + band (no fmax, no select).
    fn positive(&mut self, b: &mut FunctionBuilder, cond: Value, x: Value) -> Value {
        let m = b.ins().fcmp(FloatCC::GreaterThan, cond, self.zero);
        let m = b.ins().bitcast(F32X4, MemFlagsData::new(), m);
        b.ins().band(x, m)
    }

    /// `lowbias32` on i32x4 lanes.
    fn lowbias32(b: &mut FunctionBuilder, gc: &mut GroupCache, x: Value) -> Value {
        let s16 = gc.int(b, 16, false);
        let s15 = gc.int(b, 15, false);
        let t = b.ins().ushr(x, s16);
        let x = b.ins().bxor(x, t);
        let m1 = gc.int(b, LOWBIAS_M1, true);
        let x = b.ins().imul(x, m1);
        let t = b.ins().ushr(x, s15);
        let x = b.ins().bxor(x, t);
        let m2 = gc.int(b, LOWBIAS_M2, true);
        let x = b.ins().imul(x, m2);
        let t = b.ins().ushr(x, s16);
        b.ins().bxor(x, t)
    }

    fn load_chunk(
        b: &mut FunctionBuilder,
        gc: &mut GroupCache,
        ptr: Value,
        ch: &Chunk,
        use_i: bool,
    ) -> Value {
        let addr = gc.addr(b, ptr, ch, use_i);
        let disp = (ch.off * 4) as i32;
        if ch.scalar {
            let x = b.ins().load(F32, scalar_flags(), addr, disp);
            b.ins().scalar_to_vector(F32X4, x)
        } else {
            b.ins().load(F32X4, vec_flags(), addr, disp)
        }
    }

    fn store_chunk(b: &mut FunctionBuilder, gc: &mut GroupCache, ptr: Value, ch: &Chunk, v: Value) {
        let addr = gc.addr(b, ptr, ch, false);
        let disp = (ch.off * 4) as i32;
        if ch.scalar {
            let x = b.ins().extractlane(v, 0);
            b.ins().store(scalar_flags(), x, addr, disp);
        } else {
            b.ins().store(vec_flags(), v, addr, disp);
        }
    }

    /// Computes all live nodes for each chunk of a group, then stores
    /// `stores` (buffer, node) for every chunk; returns `result[node][chunk]`
    /// (`None` for dead nodes).
    pub fn eval_group(
        &mut self,
        b: &mut FunctionBuilder,
        chunks: &[Chunk],
        stores: &[(BufId, ExprId)],
    ) -> Vec<Vec<Option<Value>>> {
        let n = self.g.nodes().len();
        let mut vals: Vec<Vec<Option<Value>>> = vec![vec![None; chunks.len()]; n];
        let mut gc = GroupCache::default();
        for idx in 0..n {
            if !self.live[idx] {
                continue;
            }
            if self.level[idx] != Level::Elem {
                let v = self.fixed[idx].expect("fixed value missing");
                vals[idx] = vec![Some(v); chunks.len()];
                continue;
            }
            let node = self.g.nodes()[idx].clone();
            for (k, ch) in chunks.iter().enumerate() {
                let v = match &node {
                    Node::Load(buf) => Self::load_chunk(b, &mut gc, self.bufs[buf], ch, false),
                    Node::ChanLoad(buf) => {
                        debug_assert_eq!(self.mode, ChanMode::PerElem);
                        Self::load_chunk(b, &mut gc, self.bufs[buf], ch, true)
                    }
                    Node::DropMask {
                        factors,
                        index_base,
                        scale,
                        x,
                    } => {
                        let xv = vals[x.0 as usize][k].expect("operand");
                        let s = *gc
                            .floats
                            .entry(scale.to_bits())
                            .or_insert_with(|| Self::splat_f32(b, *scale));
                        let y = b.ins().fmul(xv, s);
                        let mut keep: Option<Value> = None;
                        for f in factors.iter().filter(|f| f.threshold > 0) {
                            let bits1 = self.mask_bits1(b, &mut gc, f.key, *index_base, k, ch);
                            // bits1 >= t  <=>  bits1 > t - 1   (t > 0: no overflow)
                            let t = gc.int(b, (f.threshold - 1) as u32, true);
                            let m = b.ins().icmp(IntCC::SignedGreaterThan, bits1, t);
                            keep = Some(match keep {
                                None => m,
                                Some(prev) => b.ins().band(prev, m),
                            });
                        }
                        match keep {
                            None => y,
                            Some(m) => {
                                let m = b.ins().bitcast(F32X4, MemFlagsData::new(), m);
                                b.ins().band(y, m)
                            }
                        }
                    }
                    other => {
                        let ops: Vec<Value> = other
                            .operands()
                            .iter()
                            .map(|o| vals[o.0 as usize][k].expect("operand"))
                            .collect();
                        self.arith(b, other, &ops)
                    }
                };
                vals[idx][k] = Some(v);
            }
        }
        for (buf, node) in stores {
            for (k, ch) in chunks.iter().enumerate() {
                let v = vals[node.0 as usize][k].expect("stored value");
                Self::store_chunk(b, &mut gc, self.bufs[buf], ch, v);
            }
        }
        vals
    }

    /// `mask_bits(key, e + index_base) >> 1` for the lanes of chunk `k`.
    fn mask_bits1(
        &mut self,
        b: &mut FunctionBuilder,
        gc: &mut GroupCache,
        key: KeySlot,
        index_base: u32,
        k: usize,
        ch: &Chunk,
    ) -> Value {
        if let Some(v) = gc.bits.get(&(key, index_base, k)) {
            return *v;
        }
        let base = match gc.idx.get(&index_base) {
            Some(v) => *v,
            None => {
                let e = b.ins().ireduce(I32, ch.e);
                let e = if index_base != 0 {
                    b.ins().iadd_imm_s(e, index_base as i32 as i64)
                } else {
                    e
                };
                let v = b.ins().splat(I32X4, e);
                gc.idx.insert(index_base, v);
                v
            }
        };
        // Lane l of the chunk is element e + off + l.
        let lanes: Vec<u8> = (0..4u32).flat_map(|l| (ch.off + l).to_le_bytes()).collect();
        let h = b.func.dfg.constants.insert(ConstantData::from(lanes));
        let lanes = b.ins().vconst(I32X4, h);
        let iv = b.ins().iadd(base, lanes);
        let (lo, hi) = self.keys[&key];
        let h = b.ins().bxor(iv, lo);
        let h = Self::lowbias32(b, gc, h);
        let h = b.ins().bxor(h, hi);
        let h = Self::lowbias32(b, gc, h);
        let one = gc.int(b, 1, false);
        let h = b.ins().ushr(h, one);
        gc.bits.insert((key, index_base, k), h);
        h
    }
}

/// `for iv in (start..end).step_by(step)`; `guard` adds the `start < end` test
/// (omit it when the trip count is known to be positive). Leaves the builder in
/// the exit block.
pub(crate) fn counted_loop(
    b: &mut FunctionBuilder,
    start: Value,
    end: Value,
    step: i64,
    guard: bool,
    body: &mut dyn FnMut(&mut FunctionBuilder, Value),
) {
    let var = b.declare_var(I64);
    b.def_var(var, start);
    let body_blk = b.create_block();
    let exit = b.create_block();
    if guard {
        let c = b.ins().icmp(IntCC::SignedLessThan, start, end);
        b.ins().brif(c, body_blk, &[], exit, &[]);
    } else {
        b.ins().jump(body_blk, &[]);
    }
    b.switch_to_block(body_blk);
    let iv = b.use_var(var);
    body(b, iv);
    let next = b.ins().iadd_imm_s(iv, step);
    b.def_var(var, next);
    let c = b.ins().icmp(IntCC::SignedLessThan, next, end);
    b.ins().brif(c, body_blk, &[], exit, &[]);
    b.switch_to_block(exit);
}

/// Visits one row of `len` elements starting at flat element `row_e` in groups:
/// 4 vector chunks per iteration of the main loop, then up to 3 vector chunks,
/// then up to 3 scalar chunks. `on_group(b, chunks, first_vector_index)`.
pub(crate) fn emit_row(
    b: &mut FunctionBuilder,
    row_e: Value,
    len: usize,
    on_group: &mut dyn FnMut(&mut FunctionBuilder, &[Chunk]),
) {
    let n16 = len / 16;
    let rem4 = (len % 16) / 4;
    let tail = len % 4;
    let group = |e: Value, i: RowIndex, n: usize, scalar: bool| -> Vec<Chunk> {
        (0..n)
            .map(|k| Chunk {
                e,
                i,
                off: if scalar { k as u32 } else { 4 * k as u32 },
                scalar,
            })
            .collect()
    };
    if n16 == 1 {
        on_group(b, &group(row_e, RowIndex::Const(0), 4, false));
    } else if n16 > 1 {
        let zero = b.ins().iconst(I64, 0);
        let end = b.ins().iconst(I64, (n16 * 16) as i64);
        counted_loop(b, zero, end, 16, false, &mut |b, i| {
            let e = b.ins().iadd(row_e, i);
            on_group(b, &group(e, RowIndex::Var(i), 4, false));
        });
    }
    let mut at = n16 * 16;
    if rem4 > 0 {
        let e = b.ins().iadd_imm_s(row_e, at as i64);
        on_group(b, &group(e, RowIndex::Const(at as i64), rem4, false));
        at += rem4 * 4;
    }
    if tail > 0 {
        let e = b.ins().iadd_imm_s(row_e, at as i64);
        on_group(b, &group(e, RowIndex::Const(at as i64), tail, true));
    }
}
