//! Expression DSL shared by the elementwise and reduction emitters.
//!
//! An [`ExprGraph`] is an arena of [`Node`]s in creation (hence topological)
//! order; an [`ExprId`] names a node. Sharing a node between several uses (or
//! several outputs) computes it once per element. Every node denotes an `f32`
//! value at flat element index `e = (outer*C + c)*INNER + i`.
//!
//! Semantics (also implemented by `ExprGraph::eval_scalar`, the reference the
//! JIT is tested against bit for bit):
//! - `Load(b)`: `b[e]`; `ChanLoad(b)`: `b[c]`; `Const(v)`: `v`.
//! - `Add/Sub/Mul/Div`: IEEE f32 ops; `Sqrt`: IEEE sqrt.
//! - `Relu(x)`: `if x > 0 { x } else { +0.0 }` (NaN gives 0).
//! - `PositiveMask(cond, x)`: `if cond > 0 { x } else { +0.0 }`.
//! - `DropMask { factors, index_base, scale, x }`: with
//!   `idx = (e as u32).wrapping_add(index_base)`, `x * scale` when every factor
//!   keeps `idx` (`mask::is_kept(keys[f.key], idx, f.threshold)`), else `+0.0`.
//!   Keys are read at run time from the key table argument, so the step number
//!   is a runtime input. A factor with `threshold <= 0` keeps everything and is
//!   not emitted.

/// Index of a buffer pointer in the kernel's `args` array.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BufId(pub u32);

/// Index of a `u64` mask key in the kernel's `keys` table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeySlot(pub u32);

/// A node of an [`ExprGraph`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExprId(pub u32);

/// One mask factor: key slot and keep threshold (see `mask::keep_threshold`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MaskFactor {
    pub key: KeySlot,
    pub threshold: i32,
}

/// Expression node. Operands always refer to earlier nodes.
#[derive(Clone, Debug, PartialEq)]
pub enum Node {
    Load(BufId),
    ChanLoad(BufId),
    Const(f32),
    Add(ExprId, ExprId),
    Sub(ExprId, ExprId),
    Mul(ExprId, ExprId),
    Div(ExprId, ExprId),
    Sqrt(ExprId),
    Relu(ExprId),
    PositiveMask {
        cond: ExprId,
        x: ExprId,
    },
    DropMask {
        factors: Vec<MaskFactor>,
        index_base: u32,
        scale: f32,
        x: ExprId,
    },
}

impl Node {
    /// Operand nodes, in order.
    pub fn operands(&self) -> Vec<ExprId> {
        match self {
            Node::Load(_) | Node::ChanLoad(_) | Node::Const(_) => vec![],
            Node::Add(a, b) | Node::Sub(a, b) | Node::Mul(a, b) | Node::Div(a, b) => vec![*a, *b],
            Node::Sqrt(x) | Node::Relu(x) => vec![*x],
            Node::PositiveMask { cond, x } => vec![*cond, *x],
            Node::DropMask { x, .. } => vec![*x],
        }
    }
}

/// Arena of expression nodes; build it with the methods below.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ExprGraph {
    nodes: Vec<Node>,
}

impl ExprGraph {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    pub fn node(&self, id: ExprId) -> &Node {
        &self.nodes[id.0 as usize]
    }

    /// Renumbers the mask key slots so the smallest is 0 and returns how far
    /// they moved: the caller passes `keys + base` instead of `keys`, so loops
    /// that differ only in which dropout site they mask compile once.
    pub fn rebase_keys(&mut self) -> u32 {
        let base = self.mask_factors().map(|f| f.key.0).min().unwrap_or(0);
        for n in &mut self.nodes {
            if let Node::DropMask { factors, .. } = n {
                for f in factors {
                    f.key.0 -= base;
                }
            }
        }
        base
    }

    /// One past the largest key slot read (0 when no mask is applied).
    pub fn key_slots(&self) -> u32 {
        self.mask_factors().map(|f| f.key.0 + 1).max().unwrap_or(0)
    }

    fn mask_factors(&self) -> impl Iterator<Item = &MaskFactor> {
        self.nodes.iter().flat_map(|n| match n {
            Node::DropMask { factors, .. } => factors.as_slice(),
            _ => &[],
        })
    }

    /// Appends a node (operands must already exist) and returns its id.
    pub fn push(&mut self, node: Node) -> ExprId {
        let id = ExprId(self.nodes.len() as u32);
        for op in node.operands() {
            assert!(
                op.0 < id.0,
                "operand {op:?} of node {id:?} does not exist yet"
            );
        }
        self.nodes.push(node);
        id
    }

    pub fn load(&mut self, b: BufId) -> ExprId {
        self.push(Node::Load(b))
    }
    pub fn chan_load(&mut self, b: BufId) -> ExprId {
        self.push(Node::ChanLoad(b))
    }
    pub fn constant(&mut self, v: f32) -> ExprId {
        self.push(Node::Const(v))
    }
    pub fn add(&mut self, a: ExprId, b: ExprId) -> ExprId {
        self.push(Node::Add(a, b))
    }
    pub fn sub(&mut self, a: ExprId, b: ExprId) -> ExprId {
        self.push(Node::Sub(a, b))
    }
    pub fn mul(&mut self, a: ExprId, b: ExprId) -> ExprId {
        self.push(Node::Mul(a, b))
    }
    pub fn div(&mut self, a: ExprId, b: ExprId) -> ExprId {
        self.push(Node::Div(a, b))
    }
    pub fn sqrt(&mut self, x: ExprId) -> ExprId {
        self.push(Node::Sqrt(x))
    }
    pub fn relu(&mut self, x: ExprId) -> ExprId {
        self.push(Node::Relu(x))
    }
    /// `x` where `cond > 0`, else 0 (ReLU gradient).
    pub fn positive_mask(&mut self, cond: ExprId, x: ExprId) -> ExprId {
        self.push(Node::PositiveMask { cond, x })
    }
    /// `x * scale` where every factor keeps element `e + index_base`, else 0.
    /// Two factors express `B = F ⊙ G` with `scale = keep_scale(&[p_f, p_g])`.
    pub fn drop_mask(
        &mut self,
        factors: &[MaskFactor],
        index_base: u32,
        scale: f32,
        x: ExprId,
    ) -> ExprId {
        self.push(Node::DropMask {
            factors: factors.to_vec(),
            index_base,
            scale,
            x,
        })
    }

    /// Nodes reachable from `roots`.
    pub fn live(&self, roots: &[ExprId]) -> Vec<bool> {
        let mut live = vec![false; self.nodes.len()];
        for r in roots {
            live[r.0 as usize] = true;
        }
        for i in (0..self.nodes.len()).rev() {
            if live[i] {
                for op in self.nodes[i].operands() {
                    live[op.0 as usize] = true;
                }
            }
        }
        live
    }

    /// Buffers read by `Load` (first) and `ChanLoad` (second) among live nodes.
    pub fn buffers(&self, live: &[bool]) -> (Vec<BufId>, Vec<BufId>) {
        let (mut elem, mut chan) = (vec![], vec![]);
        for (n, _) in self.nodes.iter().zip(live).filter(|(_, l)| **l) {
            match n {
                Node::Load(b) => elem.push(*b),
                Node::ChanLoad(b) => chan.push(*b),
                _ => {}
            }
        }
        (elem, chan)
    }

    /// Scalar reference: value of every node at flat element `e`, channel `c`.
    /// `load(buf, index)` reads a buffer element. Tests only: the kernels'
    /// reference evaluators compare the JIT against it.
    #[cfg(test)]
    pub(crate) fn eval_scalar(
        &self,
        load: &dyn Fn(BufId, usize) -> f32,
        keys: &[u64],
        e: usize,
        c: usize,
    ) -> Vec<f32> {
        let mut v: Vec<f32> = Vec::with_capacity(self.nodes.len());
        for n in &self.nodes {
            let g = |x: &ExprId| v[x.0 as usize];
            let r = match n {
                Node::Load(b) => load(*b, e),
                Node::ChanLoad(b) => load(*b, c),
                Node::Const(x) => *x,
                Node::Add(a, b) => g(a) + g(b),
                Node::Sub(a, b) => g(a) - g(b),
                Node::Mul(a, b) => g(a) * g(b),
                Node::Div(a, b) => g(a) / g(b),
                Node::Sqrt(x) => g(x).sqrt(),
                Node::Relu(x) => {
                    if g(x) > 0.0 {
                        g(x)
                    } else {
                        0.0
                    }
                }
                Node::PositiveMask { cond, x } => {
                    if g(cond) > 0.0 {
                        g(x)
                    } else {
                        0.0
                    }
                }
                Node::DropMask {
                    factors,
                    index_base,
                    scale,
                    x,
                } => {
                    let idx = (e as u32).wrapping_add(*index_base);
                    let kept = factors.iter().all(|f| {
                        dropjit_graph::mask::is_kept(keys[f.key.0 as usize], idx, f.threshold)
                    });
                    if kept {
                        g(x) * *scale
                    } else {
                        0.0
                    }
                }
            };
            v.push(r);
        }
        v
    }
}

/// Compile-time loop extents: `for outer in 0..outer { for c in 0..chans { for i in 0..inner } }`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Dims {
    pub outer: usize,
    pub chans: usize,
    pub inner: usize,
}

impl Dims {
    pub fn new(outer: usize, chans: usize, inner: usize) -> Self {
        Self {
            outer,
            chans,
            inner,
        }
    }
    pub fn len(&self) -> usize {
        self.outer * self.chans * self.inner
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Test helpers shared by the kernel tests.
#[cfg(test)]
pub(crate) mod testing {
    /// Deterministic test data: values in [-2, 2) with exact zeros, -0.0 and
    /// small magnitudes sprinkled in.
    pub fn data(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|i| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                match i % 11 {
                    3 => 0.0,
                    7 => -0.0,
                    _ => ((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0,
                }
            })
            .collect()
    }

    pub const GUARD: usize = 9;
    pub const SENTINEL: f32 = 12345.678;

    /// Buffer of `n` data values followed by `GUARD` sentinels.
    pub fn guarded(n: usize, seed: u64) -> Vec<f32> {
        let mut v = data(n, seed);
        v.extend(std::iter::repeat_n(SENTINEL, GUARD));
        v
    }

    pub fn check_guard(v: &[f32]) {
        assert!(
            v[v.len() - GUARD..].iter().all(|x| *x == SENTINEL),
            "write past the end"
        );
    }

    pub fn assert_bits_eq(got: &[f32], want: &[f32], what: &str) {
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert_eq!(
                g.to_bits(),
                w.to_bits(),
                "{what}: element {i}: got {g}, want {w}"
            );
        }
    }
}
