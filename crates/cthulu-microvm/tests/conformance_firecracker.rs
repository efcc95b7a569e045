//! The conformance suite against the firecracker backend. It runs where a `firecracker`
//! binary is on PATH and `/dev/kvm` is hardware KVM; elsewhere every scenario prints
//! `SKIP firecracker: <reason>` (no registry this project reaches ships Firecracker, and
//! our CI machines' KVM is PVM).

#[path = "it/support.rs"]
mod support;

cthulu_core::conformance_suite!(support::VmTarget::new(
    cthulu_types::BackendKind::Firecracker
));
