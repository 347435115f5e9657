use dropjit_codegen::kernels::elementwise::ElementwiseKernel;
use dropjit_codegen::kernels::expr::{BufId, Dims, ExprGraph};
use dropjit_codegen::kernels::jit::KernelModule;
use dropjit_codegen::kernels::parallel::global_pool;

#[test]
fn add_then_positive_mask_two_outputs() {
    for dims in [
        Dims::new(3, 4, 64),
        Dims::new(2, 32, 256),
        Dims::new(2, 16, 1024),
    ] {
        let mut g = ExprGraph::new();
        let (a, b, y) = (g.load(BufId(0)), g.load(BufId(1)), g.load(BufId(2)));
        let s = g.add(a, b);
        let r = g.positive_mask(y, s);
        let k = ElementwiseKernel::new("k", "test", dims, g)
            .output(BufId(3), s)
            .output(BufId(4), r);
        let mut m = KernelModule::new().unwrap();
        let h = m.add_kernels(&[&k]).unwrap()[0];
        let m = m.finalize().unwrap();
        let n = dims.len();
        let mk = |seed: u32| -> Vec<f32> {
            (0..n)
                .map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 500.0 - 1.0)
                .collect()
        };
        let (va, vb, vy) = (mk(1), mk(2), mk(3));
        let (mut o1, mut o2) = (vec![0.0f32; n], vec![0.0f32; n]);
        let args = [
            va.as_ptr() as *mut f32,
            vb.as_ptr() as *mut f32,
            vy.as_ptr() as *mut f32,
            o1.as_mut_ptr(),
            o2.as_mut_ptr(),
        ];
        unsafe {
            global_pool().run_kernel(
                m.kernel(h),
                args.as_ptr(),
                [0u64].as_ptr(),
                dims.outer as i64,
                1,
            )
        };
        let mut bad = 0;
        for i in 0..n {
            let s = va[i] + vb[i];
            let r = if vy[i] > 0.0 { s } else { 0.0 };
            if o1[i] != s || o2[i] != r {
                bad += 1;
            }
        }
        assert_eq!(bad, 0, "{dims:?}: {bad} of {n} wrong");
    }
}
