//! The client against small fake servers on loopback: error bodies over real HTTP, the
//! WebSocket frame protocol of streaming exec, and the unreachable case.

mod fake;
mod http;
mod stream;
