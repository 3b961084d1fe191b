//! Embedded dashboard (to be written).
