#![forbid(unsafe_code)]

pub mod frame;
pub mod message;
pub mod mux;
