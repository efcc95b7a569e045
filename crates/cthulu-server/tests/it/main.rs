//! Integration tests of the server: the real server on a loopback port, the real host
//! backend, plain HTTP and WebSocket clients.

mod api;
mod auth;
mod capacity;
mod claude_code;
mod errors;
mod lifetime;
mod namespace;
mod openapi;
mod remote;
mod restart;
mod runs;
mod support;
mod terminal;
mod web_ui;
mod websocket;
