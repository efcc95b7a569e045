//! Flow control between a host and a guest multiplexer joined by an in-memory byte pipe.

use cthulu_guest_protocol::frame::{Channel, Decoder, StreamId};
use cthulu_guest_protocol::message::{Control, ExitStatus, Hello, Request};
use cthulu_guest_protocol::mux::{Event, Mux, Role};
use proptest::collection::vec;
use proptest::prelude::*;

/// One direction of the connection: frames the sender handed out, as bytes not yet read.
#[derive(Default)]
struct Pipe {
    bytes: Vec<u8>,
    decoder: Decoder,
}

impl Pipe {
    /// Takes every frame the sender has ready and puts it on the wire.
    fn fill(&mut self, sender: &mut Mux) {
        while let Some(frame) = sender.poll_frame() {
            frame.encode(&mut self.bytes).unwrap();
        }
    }

    /// Delivers up to `count` bytes to the receiver and returns the events.
    fn deliver(&mut self, count: usize, receiver: &mut Mux) -> Vec<Event> {
        let count = count.min(self.bytes.len());
        self.decoder.push(&self.bytes[..count]);
        self.bytes.drain(..count);
        let mut events = Vec::new();
        while let Some(frame) = self.decoder.next_frame().unwrap() {
            events.extend(receiver.receive(frame).unwrap());
        }
        events
    }
}

struct Connection {
    host: Mux,
    guest: Mux,
    to_guest: Pipe,
    to_host: Pipe,
}

impl Connection {
    fn new() -> Self {
        let mut connection = Self {
            host: Mux::new(Role::Host, Hello::new(vec![])),
            guest: Mux::new(Role::Guest, Hello::new(vec![])),
            to_guest: Pipe::default(),
            to_host: Pipe::default(),
        };
        connection.settle();
        connection
    }

    /// Exchanges frames until neither side has anything to send; returns the guest's and
    /// the host's events.
    fn settle(&mut self) -> (Vec<Event>, Vec<Event>) {
        let (mut guest_events, mut host_events) = (Vec::new(), Vec::new());
        loop {
            self.to_guest.fill(&mut self.host);
            self.to_host.fill(&mut self.guest);
            if self.to_guest.bytes.is_empty() && self.to_host.bytes.is_empty() {
                return (guest_events, host_events);
            }
            guest_events.extend(self.to_guest.deliver(usize::MAX, &mut self.guest));
            host_events.extend(self.to_host.deliver(usize::MAX, &mut self.host));
        }
    }
}

#[derive(Debug, Clone)]
enum Step {
    /// The host queues this many bytes on a stream.
    Send { stream: usize, size: usize },
    /// The guest grants credit on a stream.
    Grant { stream: usize, increment: u32 },
    /// The host hands out what it may.
    Flush,
    /// This many bytes travel host → guest.
    ToGuest(usize),
    /// This many bytes travel guest → host.
    ToHost(usize),
}

fn step(streams: usize) -> impl Strategy<Value = Step> {
    prop_oneof![
        (0..streams, 1usize..150_000).prop_map(|(stream, size)| Step::Send { stream, size }),
        (0..streams, 1u32..100_000)
            .prop_map(|(stream, increment)| Step::Grant { stream, increment }),
        Just(Step::Flush),
        (1usize..200_000).prop_map(Step::ToGuest),
        (1usize..200).prop_map(Step::ToHost),
    ]
}

/// Distinct content per stream and position, so reordering or mixing would show.
fn pattern(stream: usize, offset: usize, size: usize) -> Vec<u8> {
    (offset..offset + size)
        .map(|index| {
            (index as u8)
                .wrapping_mul(31)
                .wrapping_add(stream as u8 * 101)
        })
        .collect()
}

fn record(events: Vec<Event>, ids: &[StreamId], received: &mut [Vec<u8>]) {
    for event in events {
        if let Event::Data {
            stream_id, bytes, ..
        } = event
        {
            let index = ids.iter().position(|id| *id == stream_id).unwrap();
            received[index].extend_from_slice(&bytes);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn a_receiver_never_gets_more_than_it_granted_and_all_data_arrives_in_order(
        stream_count in 1usize..4,
        steps in vec(step(3), 1..60),
    ) {
        let mut connection = Connection::new();
        let ids: Vec<StreamId> = (0..stream_count)
            .map(|_| connection.host.open(Request::PortTunnel { port: 22 }).unwrap())
            .collect();
        let mut sent = vec![Vec::new(); stream_count];
        let mut granted = vec![0u64; stream_count];
        let mut received = vec![Vec::new(); stream_count];
        for step in steps {
            match step {
                Step::Send { stream, size } => {
                    let stream = stream % stream_count;
                    let bytes = pattern(stream, sent[stream].len(), size);
                    connection.host.send_data(ids[stream], Channel::Main, &bytes).unwrap();
                    sent[stream].extend_from_slice(&bytes);
                }
                Step::Grant { stream, increment } => {
                    let stream = stream % stream_count;
                    // The guest knows the stream once the open frame reached it.
                    if connection.guest.stream_status(ids[stream]).is_some() {
                        connection.guest.grant(ids[stream], increment).unwrap();
                        granted[stream] += u64::from(increment);
                    }
                }
                Step::Flush => connection.to_guest.fill(&mut connection.host),
                Step::ToGuest(count) => {
                    let events = connection.to_guest.deliver(count, &mut connection.guest);
                    record(events, &ids, &mut received);
                }
                Step::ToHost(count) => {
                    connection.to_host.fill(&mut connection.guest);
                    connection.to_host.deliver(count, &mut connection.host);
                }
            }
            for stream in 0..stream_count {
                prop_assert!(received[stream].len() as u64 <= granted[stream]);
                prop_assert_eq!(&received[stream][..], &sent[stream][..received[stream].len()]);
            }
        }
        // Open every window wide enough for the rest, and everything arrives.
        let (events, _) = connection.settle();
        record(events, &ids, &mut received);
        for stream in 0..stream_count {
            let missing = sent[stream].len() as u64 - granted[stream].min(sent[stream].len() as u64);
            if missing > 0 {
                connection.guest.grant(ids[stream], u32::try_from(missing).unwrap()).unwrap();
            }
        }
        let (events, _) = connection.settle();
        record(events, &ids, &mut received);
        prop_assert_eq!(received, sent);
    }
}

#[test]
fn a_flooding_exec_does_not_hold_up_another_stream() {
    let mut connection = Connection::new();
    let flood = connection
        .host
        .open(Request::PortTunnel { port: 1 })
        .unwrap();
    let quiet = connection
        .host
        .open(Request::PortTunnel { port: 2 })
        .unwrap();
    connection.settle();
    connection.host.grant(flood, 256 * 1024).unwrap();
    connection.host.grant(quiet, 256 * 1024).unwrap();
    connection.settle();

    // The guest floods stream `flood` far beyond its window; the host never reads it.
    connection
        .guest
        .send_data(flood, Channel::Main, &vec![b'x'; 8 * 1024 * 1024])
        .unwrap();
    let (_, host_events) = connection.settle();
    let flooded: usize = host_events
        .iter()
        .map(|event| match event {
            Event::Data { bytes, .. } => bytes.len(),
            _ => 0,
        })
        .sum();
    assert_eq!(flooded, 256 * 1024, "the flood stops at its window");

    // The other stream still carries its output, exit and close.
    let exit = Control::Exit(ExitStatus {
        code: Some(0),
        signal: None,
        timed_out: false,
        truncated: false,
        oom_killed: false,
    });
    connection
        .guest
        .send_data(quiet, Channel::Stderr, b"done\n")
        .unwrap();
    connection.guest.send_control(quiet, exit.clone()).unwrap();
    connection.guest.close(quiet).unwrap();
    let (_, host_events) = connection.settle();
    assert_eq!(
        host_events,
        vec![
            Event::Data {
                stream_id: quiet,
                channel: Channel::Stderr,
                bytes: b"done\n".to_vec()
            },
            Event::Control {
                stream_id: quiet,
                control: exit
            },
            Event::Closed { stream_id: quiet }
        ]
    );
    assert_eq!(
        connection.guest.queued_data(flood),
        8 * 1024 * 1024 - 256 * 1024
    );
}
