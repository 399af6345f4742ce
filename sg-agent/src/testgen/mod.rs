//! Random policies and queries for property tests and the differential runs. (in progress)
pub mod packets;
