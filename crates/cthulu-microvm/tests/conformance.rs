//! The conformance suite of `cthulu_core::conformance` against the qemu backend: real
//! microVMs (TCG on machines without hardware KVM), cloned from the test image's
//! templates, one provider per test on a temporary state directory.

#[path = "it/support.rs"]
mod support;

cthulu_core::conformance_suite!(support::VmTarget::new(cthulu_types::BackendKind::Qemu));
