//! MicroVM sandboxes: the **qemu** backend. Each sandbox is a `qemu-system-x86_64 -M
//! microvm` process running `cthulu-agent` as the guest's PID 1; the host drives QEMU
//! over QMP ([`qmp`]) and the guest over the guest protocol ([`client`], [`guest`]).
//!
//! A create clones a template snapshot ([`template`]): the first create of an image and
//! size boots a VM and saves it; later ones map its RAM file copy-on-write and load its
//! device state. QEMU runs daemonized, so VMs outlive the server; [`QemuProvider`] finds
//! them again by their pid files. [`qemu`] picks the accelerator at run time (hardware
//! KVM, else TCG) and builds the command line.
pub mod client;
pub mod firecracker;
pub mod guest;
mod pool;
pub mod provider;
pub mod qemu;
pub mod qmp;
mod sandbox;
mod state;
pub mod template;
pub mod vm;

pub use provider::{image_resolver, ImageResolver, QemuConfig, QemuProvider};
pub use sandbox::VmSandbox;
pub use template::GuestImage;

/// `count` random bytes as lowercase hex (process ids, machine ids, entropy, names).
pub(crate) fn random_hex(count: usize) -> String {
    let mut bytes = vec![0u8; count];
    // Without the kernel's randomness the values are only less unique, never unsafe:
    // identity and entropy for guests come from here, keys do not.
    let _ = getrandom::fill(&mut bytes);
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}
