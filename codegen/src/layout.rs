//! Where the persistent state lives: every parameter and state tensor, the SGD
//! momentum of each trainable one, and the learning-rate slot, in one f32
//! vector shared by the training and evaluation programs of a model.

use dropjit_graph::mask::{mask_key, Stream};
use dropjit_graph::Graph;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateLayout {
    /// Offset of each parameter, by `ParamId`.
    pub params: Vec<(usize, usize)>,
    /// Offset of each trainable parameter's momentum buffer.
    pub momentum: Vec<Option<(usize, usize)>>,
    /// One f32: the learning rate of the current step.
    pub lr: usize,
    pub len: usize,
}

/// Runs are padded to 16 floats (64 bytes) so each starts on a cache line.
fn pad(n: usize) -> usize {
    n.div_ceil(16) * 16
}

impl StateLayout {
    /// Trainable parameters that share SGD multipliers (`lr_mult`,
    /// `decay_mult`) lie back to back, in graph order, and so do their momentum
    /// buffers: the whole update of such a class is one loop over contiguous
    /// memory. Other tensors (running statistics) and each class start on a
    /// cache line.
    pub fn new(g: &Graph) -> Self {
        let mut classes: Vec<(u32, u32)> = Vec::new();
        for p in g.params.iter().filter(|p| p.trainable) {
            let key = (p.lr_mult.to_bits(), p.decay_mult.to_bits());
            if !classes.contains(&key) {
                classes.push(key);
            }
        }
        let mut at = 0;
        let mut params = vec![(0, 0); g.params.len()];
        let mut momentum = vec![None; g.params.len()];
        for is_momentum in [false, true] {
            for &class in &classes {
                for (i, p) in g.params.iter().enumerate() {
                    if p.trainable && (p.lr_mult.to_bits(), p.decay_mult.to_bits()) == class {
                        if is_momentum {
                            momentum[i] = Some((at, p.elems()));
                        } else {
                            params[i] = (at, p.elems());
                        }
                        at += p.elems();
                    }
                }
                at = pad(at);
            }
        }
        for (i, p) in g.params.iter().enumerate() {
            if !p.trainable {
                params[i] = (at, p.elems());
                at = pad(at + p.elems());
            }
        }
        let lr = at;
        at = pad(at + 1);
        StateLayout {
            params,
            momentum,
            lr,
            len: at,
        }
    }

    /// A state vector holding `params` (by `ParamId`) and zero momentum.
    pub fn pack(&self, params: &[Vec<f32>]) -> Vec<f32> {
        let mut s = vec![0.0; self.len];
        for ((o, n), v) in self.params.iter().zip(params) {
            s[*o..o + n].copy_from_slice(&v[..*n]);
        }
        s
    }
}

/// Key-table slot of a site's stream: the JIT reads `keys[slot]`.
pub fn key_slot(site: u32, stream: Stream) -> u32 {
    site * 2 + stream as u32
}

/// The key table of one step: `mask_key` of every (site, stream), computed by
/// the same function the reference interpreter uses.
pub fn step_keys(sites: usize, seed: u64, step: u64) -> Vec<u64> {
    (0..sites as u32)
        .flat_map(|s| {
            [
                mask_key(seed, step, s, Stream::F),
                mask_key(seed, step, s, Stream::G),
            ]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use dropjit_graph::GraphLoadOptions;

    fn model(name: &str) -> Graph {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../models")
            .join(name);
        dropjit_graph::load(&path, GraphLoadOptions::default()).expect("model loads")
    }

    /// Every tensor has its own range inside the state; trainable parameters
    /// of one SGD class are back to back, and their momentum buffers too, at
    /// the same relative offsets.
    #[test]
    fn classes_are_contiguous_and_tensors_disjoint() {
        for name in ["convnet_quick.json", "resnet20.json"] {
            let g = model(name);
            let l = StateLayout::new(&g);
            let mut ranges: Vec<(usize, usize)> = l.params.clone();
            ranges.extend(l.momentum.iter().flatten().copied());
            ranges.push((l.lr, 1));
            ranges.sort();
            for w in ranges.windows(2) {
                assert!(w[0].0 + w[0].1 <= w[1].0, "{name}: {w:?} overlap");
            }
            assert!(ranges.last().map_or(0, |r| r.0 + r.1) <= l.len);
            let mut classes: Vec<((u32, u32), Vec<usize>)> = Vec::new();
            for (i, p) in g.params.iter().enumerate().filter(|(_, p)| p.trainable) {
                let key = (p.lr_mult.to_bits(), p.decay_mult.to_bits());
                match classes.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, v)) => v.push(i),
                    None => classes.push((key, vec![i])),
                }
            }
            for (_, members) in &classes {
                for w in members.windows(2) {
                    let (a, b) = (l.params[w[0]], l.params[w[1]]);
                    assert_eq!(a.0 + a.1, b.0, "{name}: parameters {w:?} not adjacent");
                    let (ma, mb) = (l.momentum[w[0]].unwrap(), l.momentum[w[1]].unwrap());
                    assert_eq!(ma.0 + ma.1, mb.0, "{name}: momentum {w:?} not adjacent");
                }
            }
            // ConvNet-Quick: weights and (lr ×2, no decay) biases; ResNet-20: one class.
            let expected = if name == "resnet20.json" { 1 } else { 2 };
            assert_eq!(classes.len(), expected, "{name}");
        }
    }
}
