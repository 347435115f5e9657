//! Model parameters as a safetensors file with PyTorch names and layouts
//! (`conv1.weight` OIHW, `fc.weight` `[out, in]`, BatchNorm `weight`, `bias`,
//! `running_mean`, `running_var` and `num_batches_tracked`), so a checkpoint
//! loads into the matching PyTorch module with `load_state_dict` unchanged.

use std::path::Path;

use dropjit_graph::Graph;

use crate::tensors::{self, Out, TensorFileError};

const TRACKED: &str = ".num_batches_tracked";

/// Reads every parameter of `g` from `path`, by `ParamId`.
pub fn load(g: &Graph, path: &Path) -> Result<Vec<Vec<f32>>, TensorFileError> {
    let mut all = tensors::read(path)?;
    let params = g
        .params
        .iter()
        .map(|p| tensors::take_f32(&mut all, path, &p.name, &p.dims))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(name) = all.keys().find(|n| !n.ends_with(TRACKED)) {
        return Err(TensorFileError::Unexpected {
            path: path.to_path_buf(),
            name: name.clone(),
            hint: match g.params.first() {
                Some(first) => format!(
                    "model {} has {} tensors, e.g. {}",
                    g.name,
                    g.params.len(),
                    first.name
                ),
                None => format!("model {} has no parameters", g.name),
            },
        });
    }
    Ok(params)
}

/// BatchNorm layers' names (the prefixes of their `running_mean`).
fn batch_norm_layers(g: &Graph) -> Vec<String> {
    g.params
        .iter()
        .filter_map(|p| p.name.strip_suffix(".running_mean").map(str::to_string))
        .collect()
}

/// Writes `params` (by `ParamId`) to `path`; `steps` fills BatchNorm's
/// `num_batches_tracked`.
pub fn save(
    g: &Graph,
    params: &[Vec<f32>],
    steps: u64,
    path: &Path,
) -> Result<(), TensorFileError> {
    let tracked = [steps as i64];
    let mut out: Vec<(String, Vec<usize>, Out<'_>)> = g
        .params
        .iter()
        .zip(params)
        .map(|(p, v)| (p.name.clone(), p.dims.clone(), Out::F32(v)))
        .collect();
    for bn in batch_norm_layers(g) {
        out.push((format!("{bn}{TRACKED}"), vec![], Out::I64(&tracked)));
    }
    let meta = std::collections::HashMap::from([("model".to_string(), g.name.clone())]);
    tensors::write(path, &out, Some(meta))
}
