//! Placement: which node a new remote sandbox goes to. Pure: it decides from what the
//! nodes answered to `GET /api/v1/info`.

use cthulu_types::ServerInfo;

/// The outcome of placement: the chosen node, or why each node was passed over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    Node(String),
    Nowhere { reasons: Vec<String> },
}

/// Free sandbox slots on a node: its maximum minus what it runs; a node without a
/// maximum counts as having a great many.
pub fn free_capacity(info: &ServerInfo) -> u64 {
    u64::from(info.capacity.free())
}

/// Among `nodes` (name, and its info or why it could not be asked), the one with the most
/// free capacity whose default backend is available; ties go to the first by name.
pub fn choose_node(nodes: &[(String, Result<ServerInfo, String>)]) -> Placement {
    let mut best: Option<(&str, u64)> = None;
    let mut reasons = Vec::new();
    for (name, outcome) in nodes {
        let info = match outcome {
            Ok(info) => info,
            Err(reason) => {
                reasons.push(format!("{name}: {reason}"));
                continue;
            }
        };
        let backend = info
            .backends
            .iter()
            .find(|backend| backend.kind == info.default_backend);
        match backend {
            Some(backend) if backend.available => {}
            Some(backend) => {
                reasons.push(format!(
                    "{name}: its {} backend is unavailable: {}",
                    backend.kind,
                    backend
                        .unavailable_reason
                        .as_deref()
                        .unwrap_or("no reason given")
                ));
                continue;
            }
            None => {
                reasons.push(format!(
                    "{name}: it does not describe its default backend {}",
                    info.default_backend
                ));
                continue;
            }
        }
        let free = free_capacity(info);
        if free == 0 {
            reasons.push(format!(
                "{name}: it is full ({} of {} sandboxes)",
                info.capacity.sandboxes,
                info.capacity.max_sandboxes.unwrap_or_default()
            ));
            continue;
        }
        if best.is_none_or(|(_, most)| free > most) {
            best = Some((name, free));
        }
    }
    match best {
        Some((name, _)) => Placement::Node(name.to_owned()),
        None => Placement::Nowhere { reasons },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cthulu_types::{BackendInfo, BackendKind, Capabilities, Capacity};

    fn info(available: bool) -> ServerInfo {
        with_capacity(available, 0, None)
    }

    fn with_capacity(available: bool, sandboxes: u32, max_sandboxes: Option<u32>) -> ServerInfo {
        ServerInfo {
            version: "0".into(),
            default_backend: BackendKind::Namespace,
            backends: vec![BackendInfo {
                kind: BackendKind::Namespace,
                available,
                unavailable_reason: (!available).then(|| "no user namespaces".into()),
                capabilities: Capabilities::none(),
                limits: Vec::new(),
            }],
            auth_required: true,
            capacity: Capacity {
                sandboxes,
                max_sandboxes,
            },
        }
    }

    #[test]
    fn the_most_free_capacity_wins_and_full_nodes_are_skipped() {
        let nodes = vec![
            ("a".to_owned(), Ok(with_capacity(true, 3, Some(4)))),
            ("b".to_owned(), Ok(with_capacity(true, 1, Some(4)))),
            ("c".to_owned(), Ok(with_capacity(true, 2, Some(2)))),
        ];
        assert_eq!(choose_node(&nodes), Placement::Node("b".into()));
        let unlimited = ("d".to_owned(), Ok(with_capacity(true, 50, None)));
        let mut all = nodes.clone();
        all.push(unlimited);
        assert_eq!(choose_node(&all), Placement::Node("d".into()));
        let Placement::Nowhere { reasons } = choose_node(&nodes[2..]) else {
            panic!("a full node takes nothing");
        };
        assert_eq!(reasons, vec!["c: it is full (2 of 2 sandboxes)".to_owned()]);
        // Equal room: the first by name.
        let tied = vec![
            ("x".to_owned(), Ok(with_capacity(true, 0, Some(2)))),
            ("y".to_owned(), Ok(with_capacity(true, 0, Some(2)))),
        ];
        assert_eq!(choose_node(&tied), Placement::Node("x".into()));
    }

    #[test]
    fn unreachable_and_unable_nodes_are_skipped_with_reasons() {
        let nodes = vec![
            (
                "a".to_owned(),
                Err("unreachable: connection refused".to_owned()),
            ),
            ("b".to_owned(), Ok(info(false))),
            ("c".to_owned(), Ok(info(true))),
        ];
        assert_eq!(choose_node(&nodes), Placement::Node("c".into()));
        let Placement::Nowhere { reasons } = choose_node(&nodes[..2]) else {
            panic!("nothing can take it");
        };
        assert_eq!(reasons.len(), 2);
        assert!(reasons[0].starts_with("a: unreachable"), "{reasons:?}");
        assert!(reasons[1].contains("no user namespaces"), "{reasons:?}");
        assert_eq!(choose_node(&[]), Placement::Nowhere { reasons: vec![] });
    }
}
