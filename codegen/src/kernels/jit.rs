//! [`KernelModule`]: a JITModule for the host ISA with the `extern "C"`
//! helpers registered, plus CLIF printing for a fixed x86-64 ISA (no JIT) so
//! that snapshots do not depend on the host.
//!
//! Every CLIF text produced here starts with `; <comment>` lines naming what
//! the function implements (caller-provided, e.g. graph node names).
//!
//! # Kernel ABI ([`KernelFn`])
//! `extern "C" fn(args: *const *mut f32, keys: *const u64, begin: i64, end: i64)`
//! - `args[b]` is the base pointer of buffer `BufId(b)` (f32 elements);
//! - `keys[k]` is the mask key of `KeySlot(k)` (`mask::mask_key`, per step);
//! - `begin..end` is the range of the split dimension: `outer` for elementwise
//!   kernels, channels for reductions. Kernels never read outside it, so
//!   disjoint ranges can run concurrently (see `parallel::dropjit_parallel_for`).

use std::time::{Duration, Instant};

use cranelift_codegen::ir::{
    types, AbiParam, ExtFuncData, ExternalName, FuncRef, Function, Signature, Type, UserFuncName,
    Value,
};
use cranelift_codegen::isa::{CallConv, OwnedTargetIsa, TargetIsa};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_codegen::Context;
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{FuncId, Linkage, Module, ModuleReloc};

/// Errors of kernel construction and compilation.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("invalid kernel `{name}`: {msg}")]
    Invalid { name: String, msg: String },
    #[error("cranelift module: {0}")]
    Module(Box<cranelift_module::ModuleError>),
    #[error("cranelift codegen: {0}")]
    Codegen(String),
    #[error("ISA setup: {0}")]
    Isa(String),
}

impl From<cranelift_module::ModuleError> for KernelError {
    fn from(e: cranelift_module::ModuleError) -> Self {
        KernelError::Module(Box::new(e))
    }
}

impl From<settings::SetError> for KernelError {
    fn from(e: settings::SetError) -> Self {
        KernelError::Isa(e.to_string())
    }
}

pub type Result<T, E = KernelError> = std::result::Result<T, E>;

/// A compiled kernel: see the module docs for the ABI.
pub type KernelFn =
    unsafe extern "C" fn(args: *const *mut f32, keys: *const u64, begin: i64, end: i64);

/// Something that emits the body of one kernel with the [`KernelFn`] ABI.
pub trait KernelSpec {
    /// Symbol name (unique within a module).
    fn symbol(&self) -> &str;
    /// What it implements; becomes the first CLIF comment line(s).
    fn comment(&self) -> &str;
    fn validate(&self) -> Result<()>;
    /// The error `validate` reports, naming the kernel.
    fn invalid(&self, msg: String) -> KernelError {
        KernelError::Invalid {
            name: self.symbol().to_string(),
            msg,
        }
    }
    /// Emit the body; the builder is positioned in the entry block whose
    /// parameters are `[args, keys, begin, end]`. Must end with a return.
    /// `env` gives the pointer type and imports helpers (`expf`, `logf`).
    fn emit_body(
        &self,
        b: &mut FunctionBuilder,
        env: &mut FuncEnv,
        params: [Value; 4],
    ) -> Result<()>;
}

/// `extern "C"` helpers that JIT code may call (registered as symbols).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Helper {
    /// `parallel::dropjit_parallel_for(kernel, args, keys, total, n_threads)`
    ParallelFor,
    /// `gemm::dropjit_sgemm(desc: *const GemmDesc, a, b, c, n_threads)`
    Sgemm,
    /// `gemm::dropjit_im2col(geom: *const ConvGeom, x, col, n_images, n_threads)`
    Im2col,
    /// `gemm::dropjit_col2im(geom: *const ConvGeom, col, dx, n_images, n_threads)`
    Col2im,
    /// `exec::dropjit_run_op(op: *const NativeOp, ptrs: *const *mut f32, keys: *const u64, n_threads)`:
    /// a convolution pass or max pooling.
    RunOp,
    /// `expf(x: f32) -> f32` (Rust's `f32::exp`, as the interpreter uses).
    Expf,
    /// `logf(x: f32) -> f32` (Rust's `f32::ln`).
    Logf,
}

extern "C" fn dropjit_expf(x: f32) -> f32 {
    x.exp()
}

extern "C" fn dropjit_logf(x: f32) -> f32 {
    x.ln()
}

impl Helper {
    pub const ALL: [Helper; 7] = [
        Helper::ParallelFor,
        Helper::Sgemm,
        Helper::Im2col,
        Helper::Col2im,
        Helper::RunOp,
        Helper::Expf,
        Helper::Logf,
    ];

    pub fn symbol(self) -> &'static str {
        match self {
            Helper::ParallelFor => "dropjit_parallel_for",
            Helper::Sgemm => "dropjit_sgemm",
            Helper::Im2col => "dropjit_im2col",
            Helper::Col2im => "dropjit_col2im",
            Helper::RunOp => "dropjit_run_op",
            Helper::Expf => "dropjit_expf",
            Helper::Logf => "dropjit_logf",
        }
    }

    /// Where the helper is; `None` for the native-op dispatcher when the
    /// layer above registered none (`JitOptions::run_op`).
    fn address(self, o: &JitOptions) -> Option<*const u8> {
        Some(match self {
            Helper::ParallelFor => super::parallel::dropjit_parallel_for as *const u8,
            Helper::Sgemm => super::gemm::dropjit_sgemm as *const u8,
            Helper::Im2col => super::gemm::dropjit_im2col as *const u8,
            Helper::Col2im => super::gemm::dropjit_col2im as *const u8,
            Helper::RunOp => o.run_op? as *const u8,
            Helper::Expf => dropjit_expf as *const u8,
            Helper::Logf => dropjit_logf as *const u8,
        })
    }

    /// Parameter and return types: `usize`/`isize` are pointer-sized.
    pub fn signature(self, ptr: Type, cc: CallConv) -> Signature {
        let (p, r): (Vec<Type>, Vec<Type>) = match self {
            Helper::ParallelFor => (vec![ptr, ptr, ptr, types::I64, ptr], vec![]),
            Helper::Sgemm | Helper::Im2col | Helper::Col2im => (vec![ptr; 5], vec![]),
            Helper::RunOp => (vec![ptr; 4], vec![]),
            Helper::Expf | Helper::Logf => (vec![types::F32], vec![types::F32]),
        };
        let mut s = Signature::new(cc);
        s.params = p.into_iter().map(AbiParam::new).collect();
        s.returns = r.into_iter().map(AbiParam::new).collect();
        s
    }
}

/// The [`KernelFn`] signature.
pub fn kernel_signature(ptr: Type, cc: CallConv) -> Signature {
    let mut s = Signature::new(cc);
    for t in [ptr, ptr, types::I64, types::I64] {
        s.params.push(AbiParam::new(t));
    }
    s
}

/// Prefixes every line of `comment` with `; `.
fn comment_lines(comment: &str) -> String {
    let mut out = String::new();
    for l in comment.lines() {
        out.push_str("; ");
        out.push_str(l);
        out.push('\n');
    }
    if out.is_empty() {
        out.push_str(";\n");
    }
    out
}

/// Handle of a function defined in a [`KernelModule`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FuncHandle(pub usize);

/// Gives a function body access to helpers and to other functions of the module.
pub struct FuncEnv<'m> {
    module: Option<&'m mut JITModule>,
    ids: &'m [FuncId],
    ptr_ty: Type,
    cc: CallConv,
}

impl FuncEnv<'_> {
    pub fn ptr_ty(&self) -> Type {
        self.ptr_ty
    }

    /// Imports an `extern "C"` helper into `func`.
    pub fn helper(&mut self, func: &mut Function, h: Helper) -> Result<FuncRef> {
        let sig = h.signature(self.ptr_ty, self.cc);
        match self.module.as_deref_mut() {
            Some(m) => {
                let id = m.declare_function(h.symbol(), Linkage::Import, &sig)?;
                Ok(m.declare_func_in_func(id, func))
            }
            None => {
                let signature = func.import_signature(sig);
                Ok(func.import_function(ExtFuncData {
                    name: ExternalName::testcase(h.symbol()),
                    signature,
                    colocated: false,
                    patchable: false,
                }))
            }
        }
    }

    /// Imports a function defined earlier in the same module (e.g. to pass a
    /// kernel's address to `dropjit_parallel_for` with `func_addr`).
    pub fn func(&mut self, func: &mut Function, h: FuncHandle) -> Result<FuncRef> {
        match self.module.as_deref_mut() {
            Some(m) => Ok(m.declare_func_in_func(self.ids[h.0], func)),
            None => Err(KernelError::Codegen(
                "module functions are not available when printing CLIF alone".into(),
            )),
        }
    }
}

/// Which CLIF to keep or print.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClifStage {
    /// As emitted (before Cranelift's optimiser).
    Built,
    /// After the mid-end optimiser for the given ISA.
    Optimized,
}

struct FuncInfo {
    id: FuncId,
    clif: Option<String>,
}

/// A JIT module for the host: add kernels/functions, then [`finalize`](Self::finalize) once.
pub struct KernelModule {
    module: JITModule,
    fctx: FunctionBuilderContext,
    funcs: Vec<FuncInfo>,
    ids: Vec<FuncId>,
    keep_clif: Option<ClifStage>,
    compile_time: Duration,
}

/// Code generation options of a [`KernelModule`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JitOptions {
    /// Run Cranelift's IR verifier on every function (slower compiles).
    pub verify: bool,
    /// `opt_level=speed` (default) rather than `none`: the mid-end optimiser
    /// costs about half the compile time; the emitted IR is already hoisted
    /// by hand, so `none` loses little at run time (see the benchmark).
    pub optimize: bool,
    /// Address of `extern "C" fn(op, ptrs, threads)`, the dispatcher of the
    /// native launches (convolution, max pooling) that the execution layer
    /// provides: the kernel toolkit calls it without knowing what an op is,
    /// so it depends on nothing above it.
    pub run_op: Option<usize>,
}

impl Default for JitOptions {
    fn default() -> Self {
        Self {
            verify: cfg!(debug_assertions),
            optimize: true,
            run_op: None,
        }
    }
}

/// Shared settings: `opt_level`, non-PIC, far libcalls.
fn shared_flags(o: JitOptions) -> Result<settings::Flags> {
    let verify = o.verify;
    let mut f = settings::builder();
    f.set("opt_level", if o.optimize { "speed" } else { "none" })?;
    f.set("is_pic", "false")?;
    f.set("use_colocated_libcalls", "false")?;
    f.set("enable_verifier", if verify { "true" } else { "false" })?;
    Ok(settings::Flags::new(f))
}

/// The host ISA with every feature `cranelift_native` detects (SSE4.1 etc.).
pub fn native_isa(o: JitOptions) -> Result<OwnedTargetIsa> {
    let b = cranelift_native::builder().map_err(|e| KernelError::Isa(e.to_string()))?;
    b.finish(shared_flags(o)?)
        .map_err(|e| KernelError::Isa(e.to_string()))
}

/// A fixed x86-64 ISA (SysV, SSE4.2, no AVX) independent of the host, for snapshots.
pub fn fixed_isa() -> Result<OwnedTargetIsa> {
    let mut b = cranelift_codegen::isa::lookup_by_name("x86_64-unknown-linux-gnu")
        .map_err(|e| KernelError::Isa(e.to_string()))?;
    for f in [
        "has_sse3",
        "has_ssse3",
        "has_sse41",
        "has_sse42",
        "has_popcnt",
    ] {
        b.enable(f)?;
    }
    b.finish(shared_flags(JitOptions {
        verify: true,
        optimize: true,
        run_op: None,
    })?)
    .map_err(|e| KernelError::Isa(e.to_string()))
}

/// Builds `k` for `isa` without a JIT and returns its CLIF text (with the comment).
pub fn kernel_clif(k: &dyn KernelSpec, isa: &dyn TargetIsa, stage: ClifStage) -> Result<String> {
    k.validate()?;
    let sig = kernel_signature(isa.pointer_type(), isa.default_call_conv());
    function_clif(
        k.symbol(),
        k.comment(),
        sig,
        &mut |b, env| kernel_body(k, b, env),
        isa,
        stage,
    )
}

/// The body of a kernel: `k` emitted on the entry block's `[args, keys, begin, end]`.
fn kernel_body(k: &dyn KernelSpec, b: &mut FunctionBuilder, env: &mut FuncEnv) -> Result<()> {
    let entry = b.current_block().expect("entry block");
    let p = b.block_params(entry).to_vec();
    k.emit_body(b, env, [p[0], p[1], p[2], p[3]])
}

/// Fills `func`: an entry block with the signature's parameters, then `body`.
fn build_function(
    func: &mut Function,
    fctx: &mut FunctionBuilderContext,
    env: &mut FuncEnv,
    config: cranelift_codegen::isa::TargetFrontendConfig,
    body: &mut dyn FnMut(&mut FunctionBuilder, &mut FuncEnv) -> Result<()>,
) -> Result<()> {
    let mut b = FunctionBuilder::new(func, fctx);
    let entry = b.create_block();
    b.append_block_params_for_function_params(entry);
    b.switch_to_block(entry);
    body(&mut b, env)?;
    b.seal_all_blocks();
    b.finalize(config);
    Ok(())
}

fn finish_clif(
    ctx: &mut Context,
    isa: &dyn TargetIsa,
    comment: &str,
    stage: ClifStage,
) -> Result<String> {
    if stage == ClifStage::Optimized {
        ctx.optimize(isa, &mut Default::default())
            .map_err(|e| KernelError::Codegen(format!("{e:?}")))?;
    }
    Ok(format!("{}{}", comment_lines(comment), ctx.func.display()))
}

/// A function built but not yet compiled.
struct BuiltFunction {
    id: FuncId,
    name: String,
    comment: String,
    func: Function,
    /// CLIF as built, when asked for.
    clif: Option<String>,
}

/// What Cranelift produced for one function, ready for `define_function_bytes`.
struct MachineCode {
    alignment: u64,
    bytes: Vec<u8>,
    relocs: Vec<ModuleReloc>,
    /// CLIF after optimisation, when asked for.
    clif: Option<String>,
}

/// Compiles one function (callable from any thread: it owns its context).
fn compile_function(
    f: &BuiltFunction,
    isa: &dyn TargetIsa,
    keep_optimized: bool,
) -> Result<MachineCode> {
    let mut ctx = Context::for_function(f.func.clone());
    ctx.compile(isa, &mut Default::default())
        .map_err(|e| KernelError::Codegen(format!("{}: {:?}", f.name, e.inner)))?;
    let code = ctx.compiled_code().expect("compiled just above");
    let alignment = code.buffer.alignment as u64;
    let bytes = code.code_buffer().to_vec();
    let relocs = code
        .buffer
        .relocs()
        .iter()
        .map(|r| ModuleReloc::from_mach_reloc(r, &ctx.func, f.id))
        .collect();
    let clif =
        keep_optimized.then(|| format!("{}{}", comment_lines(&f.comment), ctx.func.display()));
    Ok(MachineCode {
        alignment,
        bytes,
        relocs,
        clif,
    })
}

impl KernelModule {
    /// A JIT module for the host ISA (verifier on in debug builds only).
    pub fn new() -> Result<Self> {
        Self::with_options(JitOptions::default())
    }

    pub fn with_options(o: JitOptions) -> Result<Self> {
        let isa = native_isa(o)?;
        let mut jb = JITBuilder::with_isa(isa, cranelift_module::default_libcall_names());
        for h in Helper::ALL {
            if let Some(address) = h.address(&o) {
                jb.symbol(h.symbol(), address);
            }
        }
        Ok(Self {
            module: JITModule::new(jb),
            fctx: FunctionBuilderContext::new(),
            funcs: vec![],
            ids: vec![],
            keep_clif: None,
            compile_time: Duration::ZERO,
        })
    }

    /// Keep the CLIF text of every function defined from now on.
    pub fn keep_clif(&mut self, stage: Option<ClifStage>) {
        self.keep_clif = stage;
    }

    pub fn isa(&self) -> &dyn TargetIsa {
        self.module.isa()
    }

    /// Total time spent building and compiling functions so far.
    pub fn compile_time(&self) -> Duration {
        self.compile_time
    }

    /// Adds a function of any signature; `body` starts in the entry block
    /// (parameters = signature params) and must end with a return.
    pub fn add_function(
        &mut self,
        name: &str,
        comment: &str,
        sig: Signature,
        body: &mut dyn FnMut(&mut FunctionBuilder, &mut FuncEnv) -> Result<()>,
    ) -> Result<FuncHandle> {
        self.define(name, comment, sig, body)
    }

    /// Adds kernels, compiling them on all cores: functions are built one by
    /// one (cheap), then Cranelift compiles them in parallel, then the code is
    /// placed in the module in order. The machine code does not depend on the
    /// thread that compiled it. Returns one handle per kernel, in order.
    pub fn add_kernels(&mut self, ks: &[&dyn KernelSpec]) -> Result<Vec<FuncHandle>> {
        let t0 = Instant::now();
        let ptr = self.module.isa().pointer_type();
        let sig = kernel_signature(ptr, self.module.isa().default_call_conv());
        let mut built = Vec::with_capacity(ks.len());
        let timing = std::env::var_os("DROPJIT_TIMING").is_some();
        for k in ks {
            k.validate()?;
            built.push(
                self.build(k.symbol(), k.comment(), sig.clone(), &mut |b, env| {
                    let entry = b.current_block().expect("entry");
                    let p = b.block_params(entry).to_vec();
                    k.emit_body(b, env, [p[0], p[1], p[2], p[3]])
                })?,
            );
        }
        let t_built = t0.elapsed();
        let isa = self.module.isa();
        let keep_optimized = self.keep_clif == Some(ClifStage::Optimized);
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, built.len().max(1));
        // Kernels differ a lot in size: threads take the next one as they go.
        let next = std::sync::atomic::AtomicUsize::new(0);
        let mut compiled: Vec<(usize, Result<MachineCode>)> = std::thread::scope(|scope| {
            let jobs: Vec<_> = (0..threads)
                .map(|_| {
                    scope.spawn(|| {
                        let mut done = Vec::new();
                        loop {
                            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let Some(f) = built.get(i) else { break done };
                            done.push((i, compile_function(f, isa, keep_optimized)));
                        }
                    })
                })
                .collect();
            jobs.into_iter()
                .flat_map(|j| j.join().expect("a compile thread panicked"))
                .collect()
        });
        compiled.sort_by_key(|(i, _)| *i);
        let compiled: Vec<MachineCode> = compiled
            .into_iter()
            .map(|(_, c)| c)
            .collect::<Result<_>>()?;
        let mut handles = Vec::with_capacity(built.len());
        for (f, code) in built.into_iter().zip(compiled) {
            handles.push(self.place(f, code)?);
        }
        if timing {
            eprintln!(
                "kernels: {} built in {t_built:?}, compiled on {threads} threads and placed in {:?}",
                handles.len(),
                t0.elapsed() - t_built
            );
        }
        self.compile_time += t0.elapsed();
        Ok(handles)
    }

    /// Declares `name` and builds its function (not yet compiled).
    fn build(
        &mut self,
        name: &str,
        comment: &str,
        sig: Signature,
        body: &mut dyn FnMut(&mut FunctionBuilder, &mut FuncEnv) -> Result<()>,
    ) -> Result<BuiltFunction> {
        if self.module.get_name(name).is_some() {
            return Err(KernelError::Invalid {
                name: name.into(),
                msg: "symbol defined twice".into(),
            });
        }
        let id = self.module.declare_function(name, Linkage::Local, &sig)?;
        let mut func = Function::with_name_signature(UserFuncName::user(0, id.as_u32()), sig);
        let isa = self.module.isa();
        let (ptr_ty, cc, config) = (
            isa.pointer_type(),
            isa.default_call_conv(),
            isa.frontend_config(),
        );
        let mut env = FuncEnv {
            module: Some(&mut self.module),
            ids: &self.ids,
            ptr_ty,
            cc,
        };
        build_function(&mut func, &mut self.fctx, &mut env, config, body)?;
        let clif = (self.keep_clif == Some(ClifStage::Built))
            .then(|| format!("{}{}", comment_lines(comment), func.display()));
        Ok(BuiltFunction {
            id,
            name: name.to_string(),
            comment: comment.to_string(),
            func,
            clif,
        })
    }

    fn define(
        &mut self,
        name: &str,
        comment: &str,
        sig: Signature,
        body: &mut dyn FnMut(&mut FunctionBuilder, &mut FuncEnv) -> Result<()>,
    ) -> Result<FuncHandle> {
        let t0 = Instant::now();
        let f = self.build(name, comment, sig, body)?;
        let keep_optimized = self.keep_clif == Some(ClifStage::Optimized);
        let code = compile_function(&f, self.module.isa(), keep_optimized)?;
        let h = self.place(f, code)?;
        self.compile_time += t0.elapsed();
        Ok(h)
    }

    /// Puts compiled code into the module (in the order functions were added).
    fn place(&mut self, f: BuiltFunction, code: MachineCode) -> Result<FuncHandle> {
        self.module
            .define_function_bytes(f.id, code.alignment, &code.bytes, &code.relocs)?;
        self.funcs.push(FuncInfo {
            id: f.id,
            clif: code.clif.or(f.clif),
        });
        self.ids.push(f.id);
        Ok(FuncHandle(self.funcs.len() - 1))
    }

    /// Links everything; function pointers are valid while the result lives.
    pub fn finalize(mut self) -> Result<CompiledModule> {
        self.module.finalize_definitions()?;
        let ptrs = self
            .funcs
            .iter()
            .map(|f| self.module.get_finalized_function(f.id))
            .collect();
        Ok(CompiledModule {
            ptrs,
            clif: self.funcs.into_iter().map(|f| f.clif).collect(),
            module: Some(self.module),
        })
    }
}

/// Finalized code. Dropping it frees the code: no pointer obtained from it may
/// be called afterwards.
pub struct CompiledModule {
    module: Option<JITModule>,
    ptrs: Vec<*const u8>,
    clif: Vec<Option<String>>,
}

impl CompiledModule {
    /// The address of a function.
    pub fn ptr(&self, h: FuncHandle) -> *const u8 {
        self.ptrs[h.0]
    }

    /// A kernel added with [`KernelModule::add_kernels`].
    pub fn kernel(&self, h: FuncHandle) -> KernelFn {
        // SAFETY: kernels are defined with `kernel_signature`, i.e. this ABI.
        unsafe { std::mem::transmute::<*const u8, KernelFn>(self.ptrs[h.0]) }
    }

    pub fn clif(&self, h: FuncHandle) -> Option<&str> {
        self.clif[h.0].as_deref()
    }
}

impl Drop for CompiledModule {
    fn drop(&mut self) {
        if let Some(m) = self.module.take() {
            // SAFETY: documented contract: no pointer is used after drop.
            unsafe { m.free_memory() };
        }
    }
}

/// Builds an arbitrary function (e.g. a step function calling helpers) for
/// `isa` without a JIT and returns its CLIF text (with the comment). Module
/// functions are not available here ([`FuncEnv::func`] fails).
pub fn function_clif(
    name: &str,
    comment: &str,
    sig: Signature,
    body: &mut dyn FnMut(&mut FunctionBuilder, &mut FuncEnv) -> Result<()>,
    isa: &dyn TargetIsa,
    stage: ClifStage,
) -> Result<String> {
    let mut ctx = Context::new();
    ctx.func = Function::with_name_signature(UserFuncName::testcase(name), sig);
    let mut env = FuncEnv {
        module: None,
        ids: &[],
        ptr_ty: isa.pointer_type(),
        cc: isa.default_call_conv(),
    };
    build_function(
        &mut ctx.func,
        &mut FunctionBuilderContext::new(),
        &mut env,
        isa.frontend_config(),
        body,
    )?;
    finish_clif(&mut ctx, isa, comment, stage)
}

#[cfg(test)]
mod tests {
    use super::super::elementwise::ElementwiseKernel;
    use super::super::expr::{BufId, Dims, ExprGraph};
    use super::*;
    use cranelift_codegen::ir::InstBuilder;

    fn tiny(name: &str, comment: &str) -> ElementwiseKernel {
        let mut g = ExprGraph::new();
        let x = g.load(BufId(0));
        let y = g.relu(x);
        ElementwiseKernel::new(name, comment, Dims::new(2, 1, 5), g).output(BufId(1), y)
    }

    #[test]
    fn jit_clif_starts_with_comment_lines() {
        for stage in [ClifStage::Built, ClifStage::Optimized] {
            let mut m = KernelModule::with_options(JitOptions {
                verify: true,
                ..JitOptions::default()
            })
            .unwrap();
            m.keep_clif(Some(stage));
            let h = m
                .add_kernels(&[&tiny("k", "relu7\n(fused: conv7 bias)")])
                .unwrap()[0];
            let c = m.finalize().unwrap();
            let text = c.clif(h).unwrap();
            assert!(
                text.starts_with("; relu7\n; (fused: conv7 bias)\nfunction "),
                "{text}"
            );
        }
    }

    #[test]
    fn duplicate_symbols_are_rejected() {
        let mut m = KernelModule::new().unwrap();
        m.add_kernels(&[&tiny("same", "a")]).unwrap();
        assert!(matches!(
            m.add_kernels(&[&tiny("same", "b")]),
            Err(KernelError::Invalid { .. })
        ));
    }

    #[test]
    fn fixed_isa_prints_helper_calls() {
        let isa = fixed_isa().unwrap();
        let ptr = isa.pointer_type();
        let mut sig = Signature::new(isa.default_call_conv());
        sig.params = vec![AbiParam::new(ptr); 3];
        let text = function_clif(
            "conv1_fwd",
            "conv1 forward: sgemm",
            sig,
            &mut |b, env| {
                let entry = b.current_block().unwrap();
                let p = b.block_params(entry).to_vec();
                let f = env.helper(b.func, Helper::Sgemm)?;
                let desc = b.ins().iconst(ptr, 0x1000);
                let nt = b.ins().iconst(ptr, 2);
                b.ins().call(f, &[desc, p[0], p[1], p[2], nt]);
                b.ins().return_(&[]);
                Ok(())
            },
            &*isa,
            ClifStage::Built,
        )
        .unwrap();
        assert!(text.starts_with("; conv1 forward: sgemm\n"));
        assert!(text.contains("%dropjit_sgemm"), "{text}");
    }
}
