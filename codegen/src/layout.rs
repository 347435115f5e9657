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

/// Elements are padded to 16 floats (64 bytes) so every tensor starts on a cache line.
fn pad(n: usize) -> usize {
    n.div_ceil(16) * 16
}

impl StateLayout {
    pub fn new(g: &Graph) -> Self {
        let mut at = 0;
        let mut take = |n: usize| {
            let o = at;
            at += pad(n);
            (o, n)
        };
        let params = g.params.iter().map(|p| take(p.elems())).collect();
        let momentum = g
            .params
            .iter()
            .map(|p| p.trainable.then(|| take(p.elems())))
            .collect();
        let lr = take(1).0;
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
