//! dropjit codegen.
