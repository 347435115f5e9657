//! The five dropout modes on a hand-built two-layer network: the derived `dW`
//! and `dx` must equal the paper's equations (1)-(4) computed here by hand from
//! the same masks.
//!
//! Network: `h = relu(W1 x + b1)`, dropout site on `h`, `z = W2 y`, mean softmax
//! cross-entropy. With forward mask F and backward mask B the paper's rules are
//!   forward:  y = F ⊙ h
//!   backward: dW2 = eᵀ (B ⊙ h),   dh = B ⊙ (W2ᵀ e),   e = dL/dz
//! and per mode (F, B) = plain (1, 1), standard (F, F), forward (F, 1),
//! backward (1, G), augmented (F, F ⊙ G).

mod common;

use dropjit_graph::autodiff::{backward, grad_output};
use dropjit_graph::dropout::DropoutConfig;
use dropjit_graph::init::generic_point;
use dropjit_graph::interp::{run, Inputs, State};
use dropjit_graph::mask::{is_kept, keep_threshold, mask_key, Stream};
use dropjit_graph::DropoutMode;

const N: usize = 3;
const IN: usize = 5;
const HID: usize = 40;
const OUT: usize = 4;
const SEED: u64 = 11;
const STEP: u64 = 5;

fn mask(stream: Stream, p: f64, len: usize) -> Vec<f64> {
    let key = mask_key(SEED, STEP, 0, stream);
    let thr = keep_threshold(p);
    (0..len)
        .map(|e| {
            if is_kept(key, e as u32, thr) {
                1.0 / (1.0 - p)
            } else {
                0.0
            }
        })
        .collect()
}

fn check_mode(mode: DropoutMode, pf: f64, pb: f64) {
    let g = common::graph(
        [IN, 1, 1],
        OUT,
        &format!(
            r#"{{"name": "f", "op": "flatten", "inputs": ["image"]}},
               {{"name": "fc1", "op": "linear", "inputs": ["f"], "out_features": {HID}}},
               {{"name": "h", "op": "relu", "inputs": ["fc1"]}},
               {{"name": "drop", "op": "dropout", "inputs": ["h"]}},
               {{"name": "fc2", "op": "linear", "inputs": ["drop"], "out_features": {OUT}, "bias": false}}"#
        ),
        "fc2",
    );
    let cfg = DropoutConfig {
        mode,
        fwd: pf,
        bwd: pb,
    };
    let bwd = backward(&g, &cfg).expect("backward graph");
    let params = generic_point(&g, 3);
    let x: Vec<f64> = (0..N * IN)
        .map(|i| ((i * 7 % 11) as f64 - 5.0) / 4.0)
        .collect();
    let labels = [1u32, 3, 0];
    let mut state = State::<f64>::new(&g, &params);
    let inputs = Inputs {
        images: &x,
        labels: &labels,
        batch: N,
        seed: SEED,
        step: STEP,
        lr: 0.0,
    };
    let vals = run(&bwd, &mut state, &inputs).expect("runs");

    // By hand.
    let w1 = &state.params[0];
    let b1 = &state.params[1];
    let w2 = &state.params[2];
    let len = N * HID;
    let ones = vec![1.0; len];
    let (f, b) = match mode {
        DropoutMode::Plain => (ones.clone(), ones.clone()),
        DropoutMode::Standard => (mask(Stream::F, pf, len), mask(Stream::F, pf, len)),
        DropoutMode::Forward => (mask(Stream::F, pf, len), ones.clone()),
        DropoutMode::Backward => (ones.clone(), mask(Stream::G, pb, len)),
        DropoutMode::Augmented => {
            let (fm, gm) = (mask(Stream::F, pf, len), mask(Stream::G, pb, len));
            let b = fm.iter().zip(&gm).map(|(a, c)| a * c).collect();
            (fm, b)
        }
    };
    let mut h = vec![0.0; len];
    for n in 0..N {
        for j in 0..HID {
            let a: f64 = (0..IN).map(|i| w1[j * IN + i] * x[n * IN + i]).sum::<f64>() + b1[j];
            h[n * HID + j] = a.max(0.0);
        }
    }
    let y: Vec<f64> = h.iter().zip(&f).map(|(a, m)| a * m).collect();
    let mut e = [0.0; N * OUT];
    for n in 0..N {
        let z: Vec<f64> = (0..OUT)
            .map(|o| (0..HID).map(|j| w2[o * HID + j] * y[n * HID + j]).sum())
            .collect();
        let max = z.iter().cloned().fold(f64::MIN, f64::max);
        let sum: f64 = z.iter().map(|v| (v - max).exp()).sum();
        for o in 0..OUT {
            let p = (z[o] - max).exp() / sum;
            e[n * OUT + o] = (p - if o as u32 == labels[n] { 1.0 } else { 0.0 }) / N as f64;
        }
    }
    // dW2 = eᵀ (B ⊙ h)
    let mut dw2 = vec![0.0; OUT * HID];
    for n in 0..N {
        for o in 0..OUT {
            for j in 0..HID {
                dw2[o * HID + j] += e[n * OUT + o] * b[n * HID + j] * h[n * HID + j];
            }
        }
    }
    // dh = B ⊙ (W2ᵀ e); the gradient reaching the relu output.
    let dh: Vec<f64> = (0..len)
        .map(|k| {
            let (n, j) = (k / HID, k % HID);
            b[k] * (0..OUT)
                .map(|o| w2[o * HID + j] * e[n * OUT + o])
                .sum::<f64>()
        })
        .collect();
    // dW1 = (dh ⊙ [h > 0])ᵀ x
    let mut dw1 = vec![0.0; HID * IN];
    for n in 0..N {
        for j in 0..HID {
            let d = if h[n * HID + j] > 0.0 {
                dh[n * HID + j]
            } else {
                0.0
            };
            for i in 0..IN {
                dw1[j * IN + i] += d * x[n * IN + i];
            }
        }
    }

    let got_dw2 = vals.output(&bwd, &grad_output("fc2.weight")).expect("dW2");
    let got_dw1 = vals.output(&bwd, &grad_output("fc1.weight")).expect("dW1");
    let close = |a: &[f64], b: &[f64], what: &str| {
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() <= 1e-12 * (1.0 + y.abs()),
                "{mode:?} {what}[{i}]: derived {x}, by hand {y}"
            );
        }
    };
    close(got_dw2, &dw2, "dW2");
    close(got_dw1, &dw1, "dW1 (carries dx of the site)");
    // The masks really differ between modes where the paper says they do.
    let f_dropped = f.iter().filter(|&&v| v == 0.0).count();
    let b_dropped = b.iter().filter(|&&v| v == 0.0).count();
    match mode {
        DropoutMode::Plain => assert_eq!((f_dropped, b_dropped), (0, 0)),
        DropoutMode::Forward => assert!(f_dropped > 0 && b_dropped == 0),
        DropoutMode::Backward => assert!(f_dropped == 0 && b_dropped > 0),
        DropoutMode::Standard => assert_eq!(f, b),
        DropoutMode::Augmented => assert!(b_dropped > f_dropped && f_dropped > 0),
    }
}

#[test]
fn plain() {
    check_mode(DropoutMode::Plain, 0.0, 0.0);
}

#[test]
fn standard_masks_features_and_error_with_f() {
    check_mode(DropoutMode::Standard, 0.3, 0.0);
}

#[test]
fn forward_uses_unmasked_features_and_error() {
    check_mode(DropoutMode::Forward, 0.3, 0.0);
}

#[test]
fn backward_masks_both_in_backward_pass_only() {
    check_mode(DropoutMode::Backward, 0.0, 0.3);
}

#[test]
fn augmented_masks_backward_with_f_times_g() {
    check_mode(DropoutMode::Augmented, 0.3, 0.2);
}

#[test]
fn ratios_outside_unit_interval_are_rejected() {
    let g = common::graph(
        [2, 1, 1],
        2,
        r#"{"name": "f", "op": "flatten", "inputs": ["image"]},
           {"name": "d", "op": "dropout", "inputs": ["f"]},
           {"name": "fc", "op": "linear", "inputs": ["d"], "out_features": 2}"#,
        "fc",
    );
    for (fwd, bwd) in [(1.0, 0.0), (-0.1, 0.0), (f64::NAN, 0.0), (0.2, 1.5)] {
        let cfg = DropoutConfig {
            mode: DropoutMode::Augmented,
            fwd,
            bwd,
        };
        let err = backward(&g, &cfg).expect_err("bad ratio").to_string();
        assert!(err.contains("dropout ratio must be in [0, 1)"), "{err}");
    }
}
