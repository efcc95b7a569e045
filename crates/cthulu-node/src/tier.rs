//! [`Tier`]: the VM sizes of the earlier system's `/vms` API, and what each asks of a
//! backend.

use cthulu_types::{BackendKind, Resources};

/// A VM size: `nano` = 1 vCPU / 512 MB, `micro` = 2 vCPUs / 1024 MB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    Nano,
    Micro,
}

impl Tier {
    pub const ALL: [Tier; 2] = [Tier::Nano, Tier::Micro];

    pub fn parse(name: &str) -> Option<Tier> {
        Tier::ALL.into_iter().find(|tier| tier.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Nano => "nano",
            Tier::Micro => "micro",
        }
    }

    pub fn vcpus(self) -> u32 {
        match self {
            Tier::Nano => 1,
            Tier::Micro => 2,
        }
    }

    pub fn memory_mb(self) -> u64 {
        match self {
            Tier::Nano => 512,
            Tier::Micro => 1024,
        }
    }

    /// The limits a sandbox of this tier is created with on `backend`: a VM gets its
    /// vCPUs and RAM; a namespace sandbox shares the host's CPUs, so it gets the same
    /// number of cores as a CPU share (as does a container), and a memory limit; the host backend enforces
    /// neither, so it is asked for none.
    pub fn resources(self, backend: BackendKind) -> Resources {
        match backend {
            BackendKind::Host => Resources::default(),
            BackendKind::Namespace | BackendKind::Docker | BackendKind::Gvisor => Resources {
                memory_mb: Some(self.memory_mb()),
                cpus: Some(f64::from(self.vcpus())),
                ..Resources::default()
            },
            _ => Resources {
                memory_mb: Some(self.memory_mb()),
                vcpus: Some(self.vcpus()),
                ..Resources::default()
            },
        }
    }
}

impl std::fmt::Display for Tier {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiers_have_the_earlier_sizes() {
        assert_eq!(Tier::parse("nano"), Some(Tier::Nano));
        assert_eq!(Tier::parse("micro"), Some(Tier::Micro));
        assert_eq!(Tier::parse("Nano"), None);
        assert_eq!(Tier::parse(""), None);
        let micro = Tier::Micro.resources(BackendKind::Qemu);
        assert_eq!((micro.vcpus, micro.memory_mb), (Some(2), Some(1024)));
        let nano = Tier::Nano.resources(BackendKind::Qemu);
        assert_eq!((nano.vcpus, nano.memory_mb), (Some(1), Some(512)));
    }

    #[test]
    fn a_namespace_sandbox_gets_a_cpu_share_instead_of_vcpus() {
        let nano = Tier::Nano.resources(BackendKind::Namespace);
        assert_eq!(nano.vcpus, None);
        assert_eq!(nano.cpus, Some(1.0));
        assert_eq!(nano.memory_mb, Some(512));
        assert_eq!(
            Tier::Micro.resources(BackendKind::Host),
            Resources::default()
        );
    }
}
