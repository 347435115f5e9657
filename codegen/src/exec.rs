//! A compiled graph: its JIT module, the schedule with its memory plan, the
//! arena, and the loop that runs the launches in order.

use std::time::Instant;

use dropjit_graph::{Graph, NodeId};

use crate::conv::ConvIsa;
use crate::kernels::gemm::{dropjit_sgemm, GemmDesc};
use crate::kernels::jit::{
    ClifStage, CompiledModule, JitOptions, KernelFn, KernelModule, KernelSpec,
};
use crate::kernels::parallel::global_pool;
use crate::layout::StateLayout;
use crate::lower::{lower_graph, KernelDef};
use crate::memory_plan::{check_planned_memory, check_tensor_sizes, plan_memory, verify};
use crate::schedule::{BufKind, BufRef, LaunchKind, NativeOp, Schedule};
use crate::CodegenError;

/// The arena: zeroed, 64-byte aligned f32 storage. Allocated zeroed by the
/// system (pages appear on first touch), so a large arena costs nothing to create.
struct Arena {
    /// 64-byte aligned start inside `base`.
    ptr: *mut f32,
    base: *mut u8,
    layout: std::alloc::Layout,
    elems: usize,
}

impl Arena {
    /// An error, not an abort, when the size overflows or the system refuses.
    fn new(elems: usize) -> Result<Self, CodegenError> {
        let too_big = || {
            CodegenError::Unsupported(format!(
                "cannot allocate an arena of {elems} values ({:.1} GiB)",
                elems as f64 * 4.0 / (1u64 << 30) as f64
            ))
        };
        // Alignment 16 keeps the system's calloc path (lazily zeroed pages);
        // the extra bytes let the start be rounded up to a huge page.
        let bytes = elems
            .max(16)
            .checked_mul(4)
            .and_then(|b| b.checked_add(HUGE_PAGE))
            .ok_or_else(too_big)?;
        let layout = std::alloc::Layout::from_size_align(bytes, 16).map_err(|_| too_big())?;
        // SAFETY: non-zero size; freed with the same layout in Drop.
        let base = unsafe { std::alloc::alloc_zeroed(layout) };
        if base.is_null() {
            return Err(too_big());
        }
        let ptr = base.wrapping_add(base.align_offset(HUGE_PAGE)) as *mut f32;
        advise_huge_pages(ptr as *mut u8, elems * 4);
        Ok(Arena {
            ptr,
            base,
            layout,
            elems,
        })
    }

    fn elems(&self) -> usize {
        self.elems
    }
}

/// Transparent huge pages are 2 MiB on x86-64.
const HUGE_PAGE: usize = 2 << 20;

/// Asks Linux to back the arena with transparent huge pages where the
/// system grants them only on request (`madvise` mode, the common default):
/// the step streams over tens of MiB of activations, and 4 KiB pages cost a
/// TLB miss every 4 KiB (ResNet-20 trained ~5 % faster with them, see
/// docs/performance.md). Untouched pages stay unallocated either way.
/// Returns whether the kernel took the advice; a refusal (THP off, an
/// older kernel) leaves ordinary pages, nothing to handle.
fn advise_huge_pages(ptr: *mut u8, bytes: usize) -> bool {
    #[cfg(target_os = "linux")]
    if bytes >= HUGE_PAGE {
        // SAFETY: `ptr` is page-aligned and the range lies inside the
        // arena's allocation; the advice changes how pages are backed, not
        // their contents.
        return unsafe { libc::madvise(ptr.cast(), bytes, libc::MADV_HUGEPAGE) } == 0;
    }
    let _ = (ptr, bytes);
    false
}

impl Drop for Arena {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.base, self.layout) }
    }
}

/// The generated step: `(arena, state, images, labels, keys, threads)`.
/// The table holds, per launch, the address of its GEMM descriptor or op (else 0),
/// so the generated code carries no absolute addresses.
type EntryFn = unsafe extern "C" fn(
    *mut f32,
    *mut f32,
    *const f32,
    *const f32,
    *const u64,
    usize,
    *const usize,
);

pub struct CompiledGraph {
    module: CompiledModule,
    entry: EntryFn,
    /// Owned by the graph: the generated code holds their addresses.
    #[allow(dead_code)]
    calls: Vec<Option<Box<NativeOp>>>,
    #[allow(dead_code)]
    descs: Vec<Option<Box<GemmDesc>>>,
    /// Per launch: address of `descs[i]` or `calls[i]`, or 0.
    table: Vec<usize>,
    funcs: Vec<KernelFn>,
    pub schedule: Schedule,
    outputs: Vec<(String, BufRef)>,
    /// Per output: a copy taken after each run when the output is not an
    /// arena buffer (a graph whose logits are its flattened image, or a
    /// parameter), so reading it never looks outside the arena.
    detached: Vec<Option<Vec<f32>>>,
    /// Arena buffers of node values, kept for [`CompiledGraph::node_value`]
    /// (empty unless compiled with `keep_values`).
    node_buffers: Vec<(NodeId, BufRef)>,
    arena: Arena,
    pub batch: usize,
    /// State elements and mask keys the generated code reads (checked per run).
    state_len: usize,
    key_slots: usize,
    pub compile_ms: f64,
    /// CLIF text of each kernel (when asked for at compile time).
    pub clif: Vec<String>,
    /// CLIF text of the step entry function (when asked for).
    pub entry_clif: Option<String>,
    /// Seconds spent in each launch, when profiling is on.
    profile: Option<Vec<f64>>,
    /// Instruction set of the convolution passes.
    pub isa: ConvIsa,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct CompileOptions {
    /// Keep each function's CLIF (as built, before optimisation) for `--emit clif`.
    pub keep_clif: bool,
    /// Give every arena buffer its own memory (no reuse), so each node's value
    /// can be read after a step: for node-by-node checks, not for training.
    pub keep_values: bool,
    /// Instruction set of the convolution passes; `None`: [`ConvIsa::selected`].
    pub isa: Option<ConvIsa>,
}

/// Compiles `g` (a step or evaluation graph) for batches of `batch` images.
pub fn compile(
    g: &Graph,
    batch: usize,
    layout: &StateLayout,
    opts: CompileOptions,
) -> Result<CompiledGraph, CodegenError> {
    if batch == 0 {
        return Err(CodegenError::Unsupported(
            "batch size must be at least 1".into(),
        ));
    }
    check_tensor_sizes(g, batch)?;
    let isa = match opts.isa {
        Some(isa) => isa,
        None => ConvIsa::selected().map_err(CodegenError::Unsupported)?,
    };
    if !isa.available() {
        return Err(CodegenError::Unsupported(format!(
            "this CPU does not run the {isa} convolution kernels"
        )));
    }
    let t0 = Instant::now();
    let lowered = lower_graph(g, batch, layout, isa)?;
    let t_lower = t0.elapsed();
    let mut schedule = lowered.schedule;
    if opts.keep_values {
        for b in &mut schedule.buffers {
            b.pinned |= b.kind == BufKind::Temp;
        }
    }
    plan_memory(&mut schedule)?;
    verify(&schedule, &lowered.kernels, layout)?;
    let node_buffers = kept_values(&schedule, lowered.node_buffers, opts);
    let t_plan = t0.elapsed();
    let mut module = KernelModule::with_options(JitOptions {
        run_op: Some(dropjit_run_op as *const () as usize),
        ..JitOptions::default()
    })?;
    if opts.keep_clif {
        module.keep_clif(Some(ClifStage::Built));
    }
    // Kernels differ only in the buffers they are handed at run time, so the
    // same loop (every block of a ResNet stage, every same-sized SGD update)
    // is compiled once.
    let mut unique: std::collections::HashMap<String, usize> = Default::default();
    let mut distinct: Vec<&dyn KernelSpec> = Vec::new();
    let mut which = Vec::with_capacity(lowered.kernels.len());
    for k in &lowered.kernels {
        let next = distinct.len();
        let i = *unique.entry(kernel_key(k)).or_insert(next);
        if i == next {
            distinct.push(spec(k));
        }
        which.push(i);
    }
    let compiled = module.add_kernels(&distinct)?;
    let handles: Vec<_> = which.iter().map(|&i| compiled[i]).collect();
    let (calls, descs) = launch_data(&schedule);
    let key_slots = schedule
        .launches
        .iter()
        .filter_map(|l| {
            let used = match &l.kind {
                LaunchKind::Native(op) => op.key_slots(),
                kind => lowered.kernels[kernel_range(kind)?.0].key_slots(),
            };
            (used > 0).then_some((l.key_base + used) as usize)
        })
        .max()
        .unwrap_or(0);
    let entry_handle = module.add_function(
        "step",
        &format!("step entry: {} launches", schedule.launches.len()),
        entry_signature(&module),
        &mut |b, env| emit_entry(b, env, &schedule, &handles, &calls, &descs),
    )?;
    let module = module.finalize()?;
    // SAFETY: `entry` was defined with `entry_signature`, which is `EntryFn`'s ABI.
    let entry: EntryFn =
        unsafe { std::mem::transmute::<*const u8, EntryFn>(module.ptr(entry_handle)) };
    let entry_clif = module.clif(entry_handle).map(str::to_string);
    let funcs = handles.iter().map(|&h| module.kernel(h)).collect();
    let clif = handles
        .iter()
        .filter_map(|&h| module.clif(h).map(str::to_string))
        .collect();
    let t_jit = t0.elapsed();
    check_planned_memory(g, batch, &schedule, layout)?;
    let arena = Arena::new(schedule.arena_elems)?;
    if std::env::var_os("DROPJIT_TIMING").is_some() {
        eprintln!(
            "compile: lower {:?}, plan {:?}, jit {:?}, arena {:?}",
            t_lower,
            t_plan - t_lower,
            t_jit - t_plan,
            t0.elapsed() - t_jit
        );
    }
    let table = calls
        .iter()
        .zip(&descs)
        .map(|(c, d)| match (c, d) {
            (Some(c), _) => &**c as *const NativeOp as usize,
            (_, Some(d)) => &**d as *const GemmDesc as usize,
            _ => 0,
        })
        .collect();
    Ok(CompiledGraph {
        module,
        entry,
        calls,
        descs,
        table,
        funcs,
        schedule,
        detached: vec![None; lowered.outputs.len()],
        outputs: lowered.outputs,
        node_buffers,
        arena,
        batch,
        state_len: layout.len,
        key_slots,
        compile_ms: t0.elapsed().as_secs_f64() * 1e3,
        clif,
        entry_clif,
        profile: None,
        isa,
    })
}

/// The node values [`CompiledGraph::node_value`] can report: those in arena
/// buffers (a gradient viewed in its SGD slab included), when nothing reuses
/// them. Parameters live in the state, which the SGD and running-statistics
/// updates overwrite in place during the step, and the batch inputs are the
/// caller's, so neither is reported.
fn kept_values(
    s: &Schedule,
    node_buffers: Vec<(NodeId, BufRef)>,
    opts: CompileOptions,
) -> Vec<(NodeId, BufRef)> {
    if !opts.keep_values {
        return Vec::new();
    }
    node_buffers
        .into_iter()
        .filter(|&(_, b)| matches!(s.buffer(b).kind, BufKind::Temp | BufKind::View { .. }))
        .collect()
}

/// The CLIF of every kernel of `g`, built for a fixed x86-64 target (not the
/// host), so the text is the same on every machine, then of the step entry
/// function that launches them: for `--emit clif` and the snapshot tests.
/// Each function starts with a comment naming its graph nodes.
pub fn clif_text(g: &Graph, batch: usize, layout: &StateLayout) -> Result<String, CodegenError> {
    // Convolutions are calls to the engine whatever the instruction set, so
    // the portable one keeps the text the same on every machine.
    let lowered = lower_graph(g, batch, layout, ConvIsa::Portable)?;
    let isa = crate::kernels::jit::fixed_isa()?;
    let mut out = String::new();
    for k in &lowered.kernels {
        out.push_str(&crate::kernels::jit::kernel_clif(
            spec(k),
            &*isa,
            ClifStage::Built,
        )?);
        out.push('\n');
    }
    // The entry function calls the module's kernels, so it is built in a real
    // (host) module; its CLIF holds no addresses and nothing host-specific
    // beyond the x86-64 System V calling convention.
    let opts = CompileOptions {
        keep_clif: true,
        isa: Some(ConvIsa::Portable),
        ..Default::default()
    };
    let compiled = compile(g, batch, layout, opts)?;
    out.push_str(compiled.entry_clif.as_deref().unwrap_or_default());
    Ok(out)
}

/// The schedule and memory plan of `g` at `batch` with convolutions on
/// `isa`, as `--emit plan` prints it.
pub fn plan_text(
    g: &Graph,
    batch: usize,
    layout: &StateLayout,
    isa: ConvIsa,
) -> Result<String, CodegenError> {
    if batch == 0 {
        return Err(CodegenError::Unsupported(
            "batch size must be at least 1".into(),
        ));
    }
    check_tensor_sizes(g, batch)?;
    let lowered = lower_graph(g, batch, layout, isa)?;
    let mut schedule = lowered.schedule;
    plan_memory(&mut schedule)?;
    check_planned_memory(g, batch, &schedule, layout)?;
    verify(&schedule, &lowered.kernels, layout)?;
    Ok(schedule.text())
}

fn entry_signature(m: &KernelModule) -> cranelift_codegen::ir::Signature {
    use cranelift_codegen::ir::{AbiParam, Signature};
    let ptr = m.isa().pointer_type();
    let mut sig = Signature::new(m.isa().default_call_conv());
    sig.params = vec![AbiParam::new(ptr); 7];
    sig
}

/// Per launch: the boxed convolution pass or GEMM
/// descriptor whose address the entry function passes on.
type LaunchData = (Vec<Option<Box<NativeOp>>>, Vec<Option<Box<GemmDesc>>>);

fn launch_data(s: &Schedule) -> LaunchData {
    let calls = s
        .launches
        .iter()
        .map(|l| match &l.kind {
            LaunchKind::Native(op) => Some(Box::new(op.clone())),
            _ => None,
        })
        .collect();
    let descs = s
        .launches
        .iter()
        .map(|l| match &l.kind {
            LaunchKind::Gemm(d) => Some(Box::new(*d)),
            _ => None,
        })
        .collect();
    (calls, descs)
}

/// The step entry: for each launch, the buffer addresses (a parameter plus a
/// constant offset, checked by `verify`) go into a stack array, then one call:
/// `dropjit_parallel_for(kernel, ...)`, `dropjit_sgemm(desc, ...)` or
/// `dropjit_run_op(op, ...)`. Each call carries the launch's nodes as a comment.
fn emit_entry(
    b: &mut cranelift_frontend::FunctionBuilder,
    env: &mut crate::kernels::jit::FuncEnv,
    s: &Schedule,
    handles: &[crate::kernels::jit::FuncHandle],
    calls: &[Option<Box<NativeOp>>],
    descs: &[Option<Box<GemmDesc>>],
) -> Result<(), crate::kernels::jit::KernelError> {
    use crate::kernels::jit::Helper;
    use cranelift_codegen::ir::{types, InstBuilder, StackSlotData, StackSlotKind};
    let ptr = env.ptr_ty();
    let entry = b.current_block().expect("entry block");
    let p = b.block_params(entry).to_vec();
    let (arena, state, images, labels, keys, threads, table) =
        (p[0], p[1], p[2], p[3], p[4], p[5], p[6]);
    let entry_of = |b: &mut cranelift_frontend::FunctionBuilder, i: usize| {
        let mut flags = cranelift_codegen::ir::MemFlagsData::new();
        flags.set_notrap();
        flags.set_aligned();
        b.ins().load(ptr, flags, table, (i * 8) as i32)
    };
    let parallel_for = env.helper(b.func, Helper::ParallelFor)?;
    let sgemm = env.helper(b.func, Helper::Sgemm)?;
    let run_op = env.helper(b.func, Helper::RunOp)?;
    for (i, l) in s.launches.iter().enumerate() {
        let addrs: Vec<_> = l
            .args
            .iter()
            .map(|&r| {
                let buf = s.buffer(r);
                match buf.kind {
                    BufKind::Temp | BufKind::View { .. } => {
                        b.ins().iadd_imm_u(arena, (buf.offset * 4) as i64)
                    }
                    BufKind::State { offset } => b.ins().iadd_imm_u(state, (offset * 4) as i64),
                    BufKind::Image => images,
                    BufKind::Labels => labels,
                }
            })
            .collect();
        let array = |b: &mut cranelift_frontend::FunctionBuilder,
                     addrs: &[cranelift_codegen::ir::Value]| {
            let slot = b.create_sized_stack_slot(StackSlotData::new(
                StackSlotKind::ExplicitSlot,
                (addrs.len() * 8) as u32,
                3,
            ));
            for (k, &a) in addrs.iter().enumerate() {
                b.ins().stack_store(ptr, a, slot, (k * 8) as i32);
            }
            b.ins().stack_addr(ptr, slot, 0)
        };
        match &l.kind {
            LaunchKind::Elementwise { .. }
            | LaunchKind::Reduce { .. }
            | LaunchKind::Scalar { .. } => {
                let (func, total) = kernel_range(&l.kind).expect("a kernel launch");
                let args = array(b, &addrs);
                let kref = env.func(b.func, handles[func])?;
                let kaddr = b.ins().func_addr(ptr, kref);
                let total = b.ins().iconst(types::I64, total as i64);
                let keys = match l.key_base {
                    0 => keys,
                    base => b.ins().iadd_imm_u(keys, base as i64 * 8),
                };
                b.ins()
                    .call(parallel_for, &[kaddr, args, keys, total, threads]);
            }
            LaunchKind::Gemm(_) => {
                debug_assert!(descs[i].is_some(), "a descriptor per GEMM launch");
                let d = entry_of(b, i);
                b.ins()
                    .call(sgemm, &[d, addrs[0], addrs[1], addrs[2], threads]);
            }
            LaunchKind::Native(_) => {
                debug_assert!(calls[i].is_some(), "a boxed pass per conv launch");
                let args = array(b, &addrs);
                let op = entry_of(b, i);
                b.ins().call(run_op, &[op, args, keys, threads]);
            }
        }
    }
    b.ins().return_(&[]);
    Ok(())
}

/// What makes two kernels the same machine code: their loop nest, expression
/// graph and outputs (not their names or the nodes they implement).
fn kernel_key(k: &KernelDef) -> String {
    match k {
        KernelDef::Elementwise(e) => format!("e{:?}{:?}{:?}", e.dims, e.graph, e.outputs),
        KernelDef::Reduce(r) => format!("r{:?}{:?}{:?}", r.dims, r.graph, r.sums),
        KernelDef::Shortcut(k) => format!("s{}{}{:?}", k.grad, k.images, k.geom),
        KernelDef::SoftmaxXent(k) => format!("x{}{}{}", k.grad, k.rows, k.k),
    }
}

/// The kernel a launch runs and the length of the range it is split over.
fn kernel_range(kind: &LaunchKind) -> Option<(usize, usize)> {
    match kind {
        LaunchKind::Elementwise { func, dims } => Some((*func, dims.outer)),
        LaunchKind::Reduce { func, dims } => Some((*func, dims.chans)),
        LaunchKind::Scalar { func, op } => Some((*func, op.range())),
        LaunchKind::Gemm(_) | LaunchKind::Native(_) => None,
    }
}

fn spec(k: &KernelDef) -> &dyn KernelSpec {
    match k {
        KernelDef::Elementwise(e) => e,
        KernelDef::Reduce(r) => r,
        KernelDef::Shortcut(k) => k,
        KernelDef::SoftmaxXent(k) => k,
    }
}

/// Called by the generated step function for every convolution pass: `op`
/// is that launch, owned by the compiled graph and reached through the
/// entry's table argument.
///
/// # Safety
/// `op` is a live launch; `ptrs` holds its buffers with the extents that
/// `verify` checked.
pub unsafe extern "C" fn dropjit_run_op(
    op: *const NativeOp,
    ptrs: *const *mut f32,
    keys: *const u64,
    threads: usize,
) {
    (*op).run(ptrs, keys, threads)
}

impl CompiledGraph {
    /// Runs every launch. `state` follows the layout the graph was compiled
    /// with, `labels` are class indices, `keys` the step's mask key table.
    pub fn run(
        &mut self,
        state: &mut [f32],
        images: &[f32],
        labels: &[u32],
        keys: &[u64],
        threads: usize,
    ) -> Result<(), CodegenError> {
        let image_len = self
            .schedule
            .buffers
            .iter()
            .find(|b| b.kind == BufKind::Image)
            .map_or(0, |b| b.elems);
        // The generated code trusts these lengths: check them here, where a
        // wrong caller gets an error rather than a wild read.
        if state.len() < self.state_len || keys.len() < self.key_slots {
            return Err(CodegenError::Unsupported(format!(
                "state of {} values / {} mask keys; the program needs {} / {}",
                state.len(),
                keys.len(),
                self.state_len,
                self.key_slots
            )));
        }
        if images.len() != image_len || labels.len() != self.batch {
            return Err(CodegenError::Unsupported(format!(
                "batch of {} images / {} labels does not fit a step compiled for {} ({} values)",
                images.len(),
                labels.len(),
                self.batch,
                image_len
            )));
        }
        let labels_bits: Vec<f32> = labels.iter().map(|&l| f32::from_bits(l)).collect();
        let arena = self.arena.ptr;
        let state_ptr = state.as_mut_ptr();
        let resolve = |b: BufRef| -> *mut f32 {
            let buf = &self.schedule.buffers[b.0 as usize];
            // SAFETY: offsets were checked against the arena and state sizes by `verify`.
            unsafe {
                match buf.kind {
                    BufKind::Temp | BufKind::View { .. } => arena.add(buf.offset),
                    BufKind::State { offset } => state_ptr.add(offset),
                    BufKind::Image => images.as_ptr() as *mut f32,
                    BufKind::Labels => labels_bits.as_ptr() as *mut f32,
                }
            }
        };
        let threads = threads.max(1);
        let profile = self.profile.is_some();
        if !profile {
            // SAFETY: the generated step touches only the buffers `verify`
            // checked; the pointers are live for the call.
            unsafe {
                (self.entry)(
                    arena,
                    state_ptr,
                    images.as_ptr(),
                    labels_bits.as_ptr(),
                    keys.as_ptr(),
                    threads,
                    self.table.as_ptr(),
                )
            };
            self.detach_outputs(state, images, &labels_bits);
            return Ok(());
        }
        // Profiling: the same launches from Rust, timed one by one.
        for (li, l) in self.schedule.launches.iter().enumerate() {
            let t0 = profile.then(Instant::now);
            let ptrs: Vec<*mut f32> = l.args.iter().map(|&b| resolve(b)).collect();
            // SAFETY: every extent was verified at compile time; buffers live
            // together never overlap; the batch inputs are only read.
            unsafe {
                match &l.kind {
                    LaunchKind::Elementwise { .. }
                    | LaunchKind::Reduce { .. }
                    | LaunchKind::Scalar { .. } => {
                        let (func, total) = kernel_range(&l.kind).expect("a kernel launch");
                        global_pool().run_kernel(
                            self.funcs[func],
                            ptrs.as_ptr(),
                            keys.as_ptr().add(l.key_base as usize),
                            total as i64,
                            threads,
                        )
                    }
                    LaunchKind::Gemm(d) => dropjit_sgemm(d, ptrs[0], ptrs[1], ptrs[2], threads),
                    // The same helper the generated entry calls, same pass.
                    LaunchKind::Native(_) => dropjit_run_op(
                        self.table[li] as *const NativeOp,
                        ptrs.as_ptr(),
                        keys.as_ptr(),
                        threads,
                    ),
                }
            }
            if let (Some(t0), Some(p)) = (t0, self.profile.as_mut()) {
                p[li] += t0.elapsed().as_secs_f64();
            }
        }
        self.detach_outputs(state, images, &labels_bits);
        Ok(())
    }

    /// Copies the outputs that live outside the arena (see `detached`).
    fn detach_outputs(&mut self, state: &[f32], images: &[f32], labels_bits: &[f32]) {
        for (i, (_, b)) in self.outputs.iter().enumerate() {
            let buf = self.schedule.buffer(*b);
            let source = match buf.kind {
                BufKind::Temp | BufKind::View { .. } => continue,
                BufKind::State { offset } => &state[offset..offset + buf.elems],
                BufKind::Image => &images[..buf.elems],
                BufKind::Labels => &labels_bits[..buf.elems],
            };
            self.detached[i] = Some(source.to_vec());
        }
    }

    /// A named output (`loss`, `logits`) of the last run.
    pub fn output(&self, name: &str) -> Option<&[f32]> {
        let i = self.outputs.iter().position(|(n, _)| n == name)?;
        match &self.detached[i] {
            Some(copy) => Some(copy),
            None => self.arena_buffer(self.outputs[i].1),
        }
    }

    /// Node `id`'s value in the last run, if the step materialised it in the
    /// arena and was compiled with `keep_values` (see [`kept_values`]).
    pub fn node_value(&self, id: NodeId) -> Option<&[f32]> {
        let (_, b) = self.node_buffers.iter().find(|(n, _)| *n == id)?;
        self.arena_buffer(*b)
    }

    /// A pinned arena buffer or a view into one (outputs, or any buffer
    /// under `keep_values`); `None` for a buffer that is not in the arena.
    fn arena_buffer(&self, b: BufRef) -> Option<&[f32]> {
        let buf = self.schedule.buffer(b);
        let home = match buf.kind {
            BufKind::View { of, .. } => self.schedule.buffer(of),
            _ => buf,
        };
        if home.kind != BufKind::Temp {
            return None;
        }
        // Checked, not assumed: this is the one place safe code reads the arena.
        assert!(
            home.pinned && buf.offset + buf.elems <= self.arena.elems(),
            "{} is not a kept arena buffer",
            buf.name
        );
        let arena = self.arena.ptr as *const f32;
        // SAFETY: a pinned arena buffer lies inside the verified arena and no
        // later launch of the step reuses its memory.
        Some(unsafe { std::slice::from_raw_parts(arena.add(buf.offset), buf.elems) })
    }

    /// Starts timing every launch (a little overhead per launch).
    pub fn enable_profile(&mut self) {
        self.profile = Some(vec![0.0; self.schedule.launches.len()]);
    }

    /// Seconds per launch (with its schedule line), largest first.
    pub fn profile_by_launch(&self) -> Vec<(String, f64)> {
        let Some(p) = &self.profile else {
            return Vec::new();
        };
        let lines: Vec<String> = self
            .schedule
            .text()
            .lines()
            .filter(|l| l.contains(": ") && !l.starts_with("arena"))
            .map(str::to_string)
            .collect();
        let lines: Vec<String> = lines
            .into_iter()
            .filter(|l| !l.trim_start().starts_with('b'))
            .collect();
        let mut v: Vec<(String, f64)> = lines.into_iter().zip(p.iter().copied()).collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1));
        v
    }

    /// Per convolution shape and pass (`Forward 16x32x32->16 k3 s1`, ...):
    /// launches per step, seconds summed over the profiled runs, and
    /// floating-point operations per step (2 per multiply-add), in
    /// first-launch order.
    pub fn profile_convs(&self) -> Vec<(String, usize, f64, f64)> {
        let Some(p) = &self.profile else {
            return Vec::new();
        };
        let mut out: Vec<(String, usize, f64, f64)> = Vec::new();
        for (l, t) in self.schedule.launches.iter().zip(p) {
            let LaunchKind::Native(NativeOp::Conv(c)) = &l.kind else {
                continue;
            };
            let g = &c.geom;
            let algo = match c.algo {
                crate::conv::ConvAlgo::Direct(isa) => format!("direct {isa}"),
                crate::conv::ConvAlgo::Winograd(isa) => format!("winograd {isa}"),
                crate::conv::ConvAlgo::Im2col => "im2col".to_string(),
            };
            let name = format!("{} ({algo})", c.shape());
            let flops = 2.0 * (c.images * c.out_channels * g.col_rows() * g.col_cols()) as f64;
            match out.iter_mut().find(|e| e.0 == name) {
                Some(e) => {
                    e.1 += 1;
                    e.2 += t;
                    e.3 += flops;
                }
                None => out.push((name, 1, *t, flops)),
            }
        }
        out
    }

    /// Seconds per launch kind (`sgemm`, `im2col`, `elementwise`, ...), largest first.
    pub fn profile_by_kind(&self) -> Vec<(String, f64)> {
        let Some(p) = &self.profile else {
            return Vec::new();
        };
        let mut by: std::collections::BTreeMap<String, f64> = Default::default();
        for (l, t) in self.schedule.launches.iter().zip(p) {
            let k = match &l.kind {
                LaunchKind::Elementwise { .. } => "elementwise".to_string(),
                LaunchKind::Reduce { .. } => "reduce".to_string(),
                LaunchKind::Gemm(_) => "sgemm".to_string(),
                LaunchKind::Native(op) => op.kind_name(),
                LaunchKind::Scalar { op, .. } => op.name().to_string(),
            };
            *by.entry(k).or_default() += t;
        }
        let mut v: Vec<(String, f64)> = by.into_iter().collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1));
        v
    }

    pub fn arena_bytes(&self) -> usize {
        self.schedule.arena_elems * 4
    }

    /// Number of kernels launched, and how many distinct ones were compiled.
    pub fn kernel_count(&self) -> usize {
        self.funcs.len()
    }

    pub fn unique_kernel_count(&self) -> usize {
        let mut f: Vec<usize> = self.funcs.iter().map(|&k| k as usize).collect();
        f.sort_unstable();
        f.dedup();
        f.len()
    }

    #[doc(hidden)]
    pub fn module(&self) -> &CompiledModule {
        &self.module
    }
}

#[cfg(test)]
mod tests {
    use super::{advise_huge_pages, Arena, HUGE_PAGE};

    /// A large arena starts on a huge-page boundary and, where the system
    /// offers transparent huge pages at all, asks for them.
    #[test]
    fn large_arenas_start_on_a_huge_page_and_ask_for_huge_pages() {
        let elems = 3 * HUGE_PAGE / 4;
        let a = Arena::new(elems).expect("arena");
        assert_eq!(a.ptr as usize % HUGE_PAGE, 0);
        assert_eq!(a.elems(), elems);
        #[cfg(target_os = "linux")]
        {
            let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled");
            if thp.is_ok_and(|t| !t.contains("[never]")) {
                assert!(advise_huge_pages(a.ptr as *mut u8, elems * 4));
            }
        }
        // Small arenas are not advised (less than one huge page).
        assert!(!advise_huge_pages(a.ptr as *mut u8, 4096));
    }

    #[test]
    fn an_arena_too_large_to_exist_is_an_error_not_an_abort() {
        let err = Arena::new(usize::MAX / 2).err().expect("refused");
        assert!(
            err.to_string().contains("cannot allocate an arena"),
            "{err}"
        );
        assert_eq!(Arena::new(1000).expect("small arena").elems(), 1000);
    }
}
