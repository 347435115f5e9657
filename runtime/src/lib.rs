//! dropjit's runtime: buffers, data, optimiser state, the training loop and
//! the command-line tool. It drives `dropjit-graph` and `dropjit-codegen` and
//! never builds IR by hand.

pub mod cli;
pub mod data;
pub mod durable;
pub mod engine;
pub mod fetch;
pub mod jit_engine;
pub mod report;
pub mod sweep;
pub mod tensors;
pub mod train;
pub mod weights;
