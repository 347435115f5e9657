//! A schedule's memory plan and the checks made before any generated code
//! runs: every tensor's size against the memory limit, arena offsets from
//! buffer lifetimes, and every launch's extents inside its buffers.

use dropjit_graph::Graph;

use crate::arena::{self, Lifetime};
use crate::kernels::expr::Node as ExprNode;
use crate::kernels::gemm::GemmDesc;
use crate::layout::StateLayout;
use crate::lower::KernelDef;
use crate::schedule::{BufKind, LaunchKind, Schedule};
use crate::CodegenError;

/// Before any size is computed: no tensor alone may exceed the graph's memory
/// limit at `batch`, so no size derived from one overflows.
pub(crate) fn check_tensor_sizes(g: &Graph, batch: usize) -> Result<(), CodegenError> {
    dropjit_graph::format::check_tensor_sizes(g, batch)
        .map_err(|e| CodegenError::Unsupported(e.to_string()))
}

/// The memory limit applies at the batch actually compiled: arena and state.
pub(crate) fn check_planned_memory(
    g: &Graph,
    batch: usize,
    schedule: &Schedule,
    layout: &StateLayout,
) -> Result<(), CodegenError> {
    let need = (schedule.arena_elems as u128 + layout.len as u128) * 4;
    if need > g.memory_limit_bytes as u128 {
        return Err(CodegenError::Unsupported(format!(
            "at batch {batch} the step needs {:.2} GiB (arena and state), over the memory limit of {:.2} GiB",
            need as f64 / (1u64 << 30) as f64,
            g.memory_limit_bytes as f64 / (1u64 << 30) as f64
        )));
    }
    Ok(())
}

/// Offsets for every arena buffer from its first to its last launch. A view
/// lives inside its slab, which lives as long as any of its views.
pub(crate) fn plan_memory(s: &mut Schedule) -> Result<(), CodegenError> {
    let n = s.launches.len();
    let mut span: Vec<Option<(usize, usize)>> = vec![None; s.buffers.len()];
    let mut widen = |b: usize, (f, l): (usize, usize)| {
        span[b] = Some(match span[b] {
            None => (f, l),
            Some((f0, l0)) => (f0.min(f), l0.max(l)),
        });
    };
    for (i, l) in s.launches.iter().enumerate() {
        for b in &l.args {
            let home = match s.buffer(*b).kind {
                BufKind::View { of, .. } => of,
                _ => *b,
            };
            widen(home.0 as usize, (i, i));
        }
    }
    for b in 0..s.buffers.len() {
        let view = &s.buffers[b];
        if let BufKind::View { of, at } = view.kind {
            let slab = s.buffer(of);
            if slab.kind != BufKind::Temp || at + view.elems > slab.elems {
                return Err(CodegenError::Plan(format!(
                    "view '{}' ({} elements at {at}) does not fit in arena buffer '{}' ({})",
                    view.name, view.elems, slab.name, slab.elems
                )));
            }
            if view.pinned {
                s.buffers[of.0 as usize].pinned = true;
            }
        }
    }
    let temps: Vec<usize> = (0..s.buffers.len())
        .filter(|&i| s.buffers[i].kind == BufKind::Temp && span[i].is_some())
        .collect();
    let lifetimes: Vec<Lifetime> = temps
        .iter()
        .map(|&i| {
            let (first, last) = span[i].expect("filtered");
            let last = if s.buffers[i].pinned { n } else { last };
            Lifetime {
                bytes: s.buffers[i].elems * 4,
                first,
                last,
            }
        })
        .collect();
    let plan = arena::plan(&lifetimes);
    arena::verify(&lifetimes, &plan).map_err(CodegenError::Plan)?;
    for (k, &i) in temps.iter().enumerate() {
        s.buffers[i].offset = plan.offsets[k] / 4;
    }
    for b in 0..s.buffers.len() {
        if let BufKind::View { of, at } = s.buffers[b].kind {
            s.buffers[b].offset = s.buffer(of).offset + at;
        }
    }
    s.arena_elems = plan.size / 4;
    s.unshared_elems = plan.unshared / 4;
    Ok(())
}

pub(crate) fn gemm_extent(d: &GemmDesc, which: usize) -> usize {
    let (rows, cols, rs, cs, stride) = match which {
        0 => (d.m, d.k, d.rsa, d.csa, d.stride_a),
        1 => (d.k, d.n, d.rsb, d.csb, d.stride_b),
        _ => (d.m, d.n, d.rsc, d.csc, d.stride_c),
    };
    let last = (d.batch.max(1) - 1) as isize * stride
        + (rows as isize - 1) * rs
        + (cols as isize - 1) * cs;
    last as usize + 1
}

/// Every launch touches only elements inside its buffers, never writes the
/// batch inputs, and every arena buffer lies inside the arena: checked once,
/// before any generated code runs.
pub(crate) fn verify(
    s: &Schedule,
    kernels: &[KernelDef],
    layout: &StateLayout,
) -> Result<(), CodegenError> {
    for (i, l) in s.launches.iter().enumerate() {
        let mut need = vec![0usize; l.args.len()];
        let mut written: Vec<usize> = Vec::new();
        match &l.kind {
            LaunchKind::Elementwise { func, dims } | LaunchKind::Reduce { func, dims } => {
                let (graph, outs): (_, Vec<(usize, usize)>) = match &kernels[*func] {
                    KernelDef::Elementwise(k) => (
                        &k.graph,
                        k.outputs
                            .iter()
                            .map(|o| (o.buf.0 as usize, dims.len()))
                            .collect(),
                    ),
                    KernelDef::Reduce(k) => (
                        &k.graph,
                        k.sums
                            .iter()
                            .map(|o| (o.buf.0 as usize, dims.chans))
                            .collect(),
                    ),
                    _ => {
                        return Err(CodegenError::Plan(format!(
                            "launch {i} names kernel {func}, which is no loop over {dims:?}"
                        )))
                    }
                };
                for node in graph.nodes() {
                    match node {
                        ExprNode::Load(b) => {
                            need[b.0 as usize] = need[b.0 as usize].max(dims.len())
                        }
                        ExprNode::ChanLoad(b) => {
                            need[b.0 as usize] = need[b.0 as usize].max(dims.chans)
                        }
                        _ => {}
                    }
                }
                for (b, n) in outs {
                    need[b] = need[b].max(n);
                    written.push(b);
                }
            }
            LaunchKind::Gemm(d) => {
                need = (0..3).map(|w| gemm_extent(d, w)).collect();
                written.push(2);
            }
            LaunchKind::Native(op) => {
                need = op.extents();
                written.extend(op.written());
            }
            LaunchKind::Scalar { op, .. } => {
                let (ins, out) = op.extents();
                need = ins;
                need.push(out);
                written.push(need.len() - 1);
            }
        }
        for (k, &b) in l.args.iter().enumerate() {
            let buf = s.buffer(b);
            let fits = match buf.kind {
                BufKind::State { offset } => buf.elems >= need[k] && offset + need[k] <= layout.len,
                _ => buf.elems >= need[k],
            };
            if !fits {
                return Err(CodegenError::Plan(format!(
                    "launch {i} ({}) reads or writes {} elements of '{}', which has {}",
                    l.nodes.join(" "),
                    need[k],
                    buf.name,
                    buf.elems
                )));
            }
            if written.contains(&k) && matches!(buf.kind, BufKind::Image | BufKind::Labels) {
                return Err(CodegenError::Plan(format!(
                    "launch {i} would write the batch input '{}'",
                    buf.name
                )));
            }
        }
    }
    Ok(())
}
