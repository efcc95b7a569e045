#![forbid(unsafe_code)]

pub mod frame;
pub mod fuzzing;
pub mod message;
pub mod mux;
