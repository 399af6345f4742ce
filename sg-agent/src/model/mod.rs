//! The reference model of SEMANTICS.md. (in progress)
pub mod decide;
