//! Errors of loading, validating and transforming a graph.
//!
//! Every error names where it happened: the file, the node and the field, or the
//! line and column for a JSON syntax error. The CLI prints `Display` as is.

use std::fmt;

/// Where in a model file an error sits.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Location {
    /// Node name (`nodes[i].name`), when the error belongs to a node.
    pub node: Option<String>,
    /// Field path inside the node or the file, e.g. `kernel` or `recipe.lr.base`.
    pub field: Option<String>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.node, &self.field) {
            (Some(n), Some(fl)) => write!(f, "node '{n}', field '{fl}'"),
            (Some(n), None) => write!(f, "node '{n}'"),
            (None, Some(fl)) => write!(f, "field '{fl}'"),
            (None, None) => write!(f, "graph"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: invalid JSON: {message}")]
    Json {
        path: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{at}: {message}")]
    Invalid { at: Location, message: String },
}

impl GraphError {
    pub fn node(node: &str, message: impl Into<String>) -> Self {
        GraphError::Invalid {
            at: Location {
                node: Some(node.to_string()),
                field: None,
            },
            message: message.into(),
        }
    }

    pub fn field(node: Option<&str>, field: &str, message: impl Into<String>) -> Self {
        GraphError::Invalid {
            at: Location {
                node: node.map(str::to_string),
                field: Some(field.to_string()),
            },
            message: message.into(),
        }
    }

    pub fn graph(message: impl Into<String>) -> Self {
        GraphError::Invalid {
            at: Location::default(),
            message: message.into(),
        }
    }
}

pub type Result<T, E = GraphError> = std::result::Result<T, E>;
