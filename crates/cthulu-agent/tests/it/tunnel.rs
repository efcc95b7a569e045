//! Port tunnels to the guest's loopback.

use std::io::{Read, Write};
use std::net::TcpListener;

use cthulu_guest_protocol::message::{Control, ErrorCode, Request};
use cthulu_guest_protocol::mux::Event;

use crate::host::Agent;

#[test]
fn a_tunnel_carries_both_directions_and_half_closes() {
    let agent = Agent::start();
    let host = agent.connect();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut socket, _) = listener.accept().unwrap();
        let mut request = Vec::new();
        socket.read_to_end(&mut request).unwrap();
        let reply: Vec<u8> = request.iter().rev().copied().collect();
        socket.write_all(&reply).unwrap();
    });
    let stream = host.open(Request::PortTunnel { port });
    assert_eq!(host.answer(stream).unwrap(), Control::Done);
    let payload: Vec<u8> = (0..2_000_000u32).map(|i| (i % 253) as u8).collect();
    host.send(stream, &payload);
    host.close(stream);
    host.grant(stream, 1 << 20);
    let mut received = Vec::new();
    loop {
        match host.next(stream) {
            Event::Data { bytes, .. } => {
                host.grant(stream, bytes.len() as u32);
                received.extend_from_slice(&bytes);
            }
            Event::Credit { .. } => {}
            Event::Closed { .. } => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    server.join().unwrap();
    let expected: Vec<u8> = payload.iter().rev().copied().collect();
    assert!(received == expected, "the tunnel changed the bytes");
}

#[test]
fn a_refused_port_names_the_port() {
    let agent = Agent::start();
    let host = agent.connect();
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let error = host.request(Request::PortTunnel { port }).unwrap_err();
    assert_eq!(error.code, ErrorCode::ConnectionRefused);
    assert!(
        error.message.contains(&port.to_string()),
        "{}",
        error.message
    );
}
