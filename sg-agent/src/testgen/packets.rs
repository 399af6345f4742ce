//! Random packets and packet sequences for the differential runs. (in progress)
