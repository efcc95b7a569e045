//! Property tests of the guest protocol: frames, decoder robustness, flow control.

mod allocation;
mod flow;
mod frames;
mod strategies;
