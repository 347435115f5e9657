//! Dropout configuration: the global mode and ratios, each site's overrides, and
//! the resolved forward mask `F` and backward mask `B` of every site
//! (contract: `shared/docs/dropout-semantics.md`).

use crate::error::{GraphError, Result};
use crate::graph::{DropoutMode, Graph};
use crate::ids::SiteId;
use crate::mask::Stream;
use crate::op::{MaskFactor, MaskSpec};

/// The global dropout setting of a run (`--dropout MODE --fwd P --bwd Q`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DropoutConfig {
    pub mode: DropoutMode,
    /// Forward ratio: of `F` (standard, forward, augmented).
    pub fwd: f64,
    /// Backward ratio: of `G` (backward, augmented).
    pub bwd: f64,
}

impl DropoutConfig {
    pub const PLAIN: DropoutConfig = DropoutConfig {
        mode: DropoutMode::Plain,
        fwd: 0.0,
        bwd: 0.0,
    };

    /// Checks `0 <= p < 1` for both ratios, naming the offending flag.
    pub fn validate(&self) -> Result<()> {
        for (name, p) in [("fwd", self.fwd), ("bwd", self.bwd)] {
            check_ratio(p).map_err(|m| GraphError::field(None, name, m))?;
        }
        Ok(())
    }

    /// `plain`, `standard(p=0.3)`, `augmented(fwd=0.2,bwd=0.0001)`: for names and logs.
    pub fn describe(&self) -> String {
        match self.mode {
            DropoutMode::Plain => "plain".into(),
            DropoutMode::Standard | DropoutMode::Forward => {
                format!("{}(p={})", self.mode.name(), self.fwd)
            }
            DropoutMode::Backward => format!("backward(p={})", self.bwd),
            DropoutMode::Augmented => format!("augmented(fwd={},bwd={})", self.fwd, self.bwd),
        }
    }
}

pub fn check_ratio(p: f64) -> std::result::Result<(), String> {
    if p.is_nan() || !(0.0..1.0).contains(&p) {
        return Err(format!("dropout ratio must be in [0, 1), got {p}"));
    }
    Ok(())
}

/// The two masks of one site; `None` is the all-ones mask.
#[derive(Clone, Debug, PartialEq)]
pub struct SiteMasks {
    pub forward: Option<MaskSpec>,
    pub backward: Option<MaskSpec>,
}

fn spec(site: SiteId, factors: &[(Stream, f64)]) -> Option<MaskSpec> {
    let factors: Vec<MaskFactor> = factors
        .iter()
        .filter(|(_, p)| *p > 0.0)
        .map(|&(stream, ratio)| MaskFactor { stream, ratio })
        .collect();
    (!factors.is_empty()).then_some(MaskSpec { site, factors })
}

/// Resolves every site of `g` under `cfg`: site overrides first, then the table
///
/// | mode | F | B |
/// |---|---|---|
/// | plain | 1 | 1 |
/// | standard p | F(p) | F(p) (the same mask) |
/// | forward p | F(p) | 1 |
/// | backward p | 1 | G(p) |
/// | augmented pf, pb | F(pf) | F(pf) ⊙ G(pb) |
pub fn resolve_sites(g: &Graph, cfg: &DropoutConfig) -> Result<Vec<SiteMasks>> {
    cfg.validate()?;
    let mut out = Vec::with_capacity(g.sites.len());
    for (i, s) in g.sites.iter().enumerate() {
        let site = SiteId::from_index(i);
        let mode = s.over.mode.unwrap_or(cfg.mode);
        let fwd = s.over.fwd.unwrap_or(cfg.fwd);
        let bwd = s.over.bwd.unwrap_or(cfg.bwd);
        for (field, p) in [("fwd", fwd), ("bwd", bwd)] {
            check_ratio(p).map_err(|m| GraphError::field(Some(&s.name), field, m))?;
        }
        let (f, b) = match mode {
            DropoutMode::Plain => (None, None),
            DropoutMode::Standard => (
                spec(site, &[(Stream::F, fwd)]),
                spec(site, &[(Stream::F, fwd)]),
            ),
            DropoutMode::Forward => (spec(site, &[(Stream::F, fwd)]), None),
            DropoutMode::Backward => (None, spec(site, &[(Stream::G, bwd)])),
            DropoutMode::Augmented => (
                spec(site, &[(Stream::F, fwd)]),
                spec(site, &[(Stream::F, fwd), (Stream::G, bwd)]),
            ),
        };
        out.push(SiteMasks {
            forward: f,
            backward: b,
        });
    }
    Ok(out)
}

/// A mask's `len` elements for one step: `0` or the inverted-dropout scale,
/// all ones for the all-ones mask (`None`). The same values the interpreter
/// multiplies by, rounded to f32.
pub fn mask_values(spec: Option<&MaskSpec>, seed: u64, step: u64, len: usize) -> Vec<f32> {
    let Some(spec) = spec else {
        return vec![1.0; len];
    };
    let keys = spec.keys(seed, step);
    let scale = spec.scale() as f32;
    (0..len)
        .map(|e| {
            if crate::op::kept_by_all(&keys, e as u32) {
                scale
            } else {
                0.0
            }
        })
        .collect()
}

/// One site's forward and backward masks for a batch, as values.
#[derive(Clone, Debug, PartialEq)]
pub struct SiteMaskValues {
    /// The dropout node's name in the model file.
    pub site: String,
    /// `[N, dims of the site's input...]`.
    pub shape: Vec<usize>,
    pub forward: Vec<f32>,
    pub backward: Vec<f32>,
}

/// `F` and `B` of every site of `g` at (`seed`, `step`) for a batch of `batch`,
/// so that the modes can be checked against an independent implementation.
pub fn site_mask_values(
    g: &Graph,
    cfg: &DropoutConfig,
    seed: u64,
    step: u64,
    batch: usize,
) -> Result<Vec<SiteMaskValues>> {
    let masks = resolve_sites(g, cfg)?;
    let mut out = Vec::with_capacity(masks.len());
    for n in &g.nodes {
        let crate::op::Op::Dropout(site) = n.op else {
            continue;
        };
        let m = &masks[site.index()];
        let shape = n.ty.concrete(batch);
        let len = n.ty.elems(batch);
        out.push(SiteMaskValues {
            site: g.site(site).name.clone(),
            shape,
            forward: mask_values(m.forward.as_ref(), seed, step, len),
            backward: mask_values(m.backward.as_ref(), seed, step, len),
        });
    }
    Ok(out)
}
