//! dropjit's graph layer: the IR, the JSON model format, validation, shape
//! inference, printers, the autodiff and evaluation passes, dropout masks and the
//! reference interpreter. It knows nothing of code generation.

pub mod autodiff;
pub mod dce;
pub mod dot;
pub mod dropout;
pub mod error;
pub mod eval;
mod fields;
pub mod format;
pub mod gradcheck;
pub mod graph;
pub mod ids;
pub mod info;
pub mod init;
pub mod interp;
pub mod mask;
pub mod op;
pub mod print;
pub mod recipe;
pub mod shape;
pub mod step;

pub use error::{GraphError, Result};
pub use format::{load, parse, GraphLoadOptions};
pub use graph::{DropoutMode, Graph, Init, Layer, Node, Param, Site, SiteOverride};
pub use ids::{NodeId, ParamId, SiteId};
pub use op::Op;
pub use shape::{DType, TensorType};
