//! The agent's options on the kernel command line (`/proc/cmdline`), all `cthulu.*`:
//! `cthulu.root=/dev/vda`, `cthulu.net=ADDR/PREFIX,GW,DNS`,
//! `cthulu.channel=virtio:NAME` (the default, `virtio:org.cthulu.agent`) or
//! `cthulu.channel=vsock:PORT`.

use std::net::Ipv4Addr;

use crate::link::ChannelSpec;

/// The name of the agent's virtio-serial port unless the command line says otherwise.
pub const DEFAULT_PORT_NAME: &str = "org.cthulu.agent";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Option<Ipv4Addr>,
    pub dns: Option<Ipv4Addr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootOptions {
    pub root: Option<String>,
    pub net: Option<NetConfig>,
    pub channel: ChannelSpec,
}

/// The options, and a complaint for each `cthulu.*` option that could not be read (it is
/// ignored).
pub fn parse(cmdline: &str) -> (BootOptions, Vec<String>) {
    let mut options = BootOptions {
        root: None,
        net: None,
        channel: ChannelSpec::Virtio(DEFAULT_PORT_NAME.to_owned()),
    };
    let mut complaints = Vec::new();
    for word in cmdline.split_whitespace() {
        let Some(option) = word.strip_prefix("cthulu.") else {
            continue;
        };
        let (name, value) = option.split_once('=').unwrap_or((option, ""));
        match name {
            "root" if value.starts_with("/dev/") => options.root = Some(value.to_owned()),
            "net" => match parse_net(value) {
                Some(net) => options.net = Some(net),
                None => complaints.push(format!("cannot read cthulu.net={value}")),
            },
            "channel" => match parse_channel(value) {
                Some(channel) => options.channel = channel,
                None => complaints.push(format!("cannot read cthulu.channel={value}")),
            },
            _ => complaints.push(format!("unknown option cthulu.{option}")),
        }
    }
    (options, complaints)
}

/// The parameters the command line gives module `module` (`<module>.<param>=<value>`
/// words, `-` and `_` alike in the name), joined as `finit_module` takes them. The kernel
/// applies such words only to built-in code; for loadable modules modprobe reads them
/// from `/proc/cmdline`, and the agent loads modules itself. Firecracker describes its
/// virtio-mmio devices this way (`virtio_mmio.device=4K@0xd0000000:5`).
pub fn module_parameters(cmdline: &str, module: &str) -> String {
    let normalize = |name: &str| name.replace('-', "_");
    let module = normalize(module);
    cmdline
        .split_whitespace()
        .filter_map(|word| {
            let (name, parameter) = word.split_once('.')?;
            (normalize(name) == module && parameter.contains('=')).then_some(parameter)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn parse_net(value: &str) -> Option<NetConfig> {
    let mut parts = value.split(',');
    let (address, prefix) = parts.next()?.split_once('/')?;
    let prefix: u8 = prefix.parse().ok().filter(|prefix| *prefix <= 32)?;
    let optional = |part: Option<&str>| -> Option<Option<Ipv4Addr>> {
        match part {
            None | Some("") => Some(None),
            Some(text) => text.parse().ok().map(Some),
        }
    };
    let gateway = optional(parts.next())?;
    let dns = optional(parts.next())?;
    if parts.next().is_some() {
        return None;
    }
    Some(NetConfig {
        address: address.parse().ok()?,
        prefix,
        gateway,
        dns,
    })
}

fn parse_channel(value: &str) -> Option<ChannelSpec> {
    match value.split_once(':')? {
        ("virtio", name) if !name.is_empty() => Some(ChannelSpec::Virtio(name.to_owned())),
        ("vsock", port) => port.parse().ok().map(ChannelSpec::Vsock),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_parameters_are_picked_out_of_the_command_line() {
        let cmdline = "console=ttyS0 virtio_mmio.device=4K@0xd0000000:5 \
                       virtio-mmio.device=4K@0xd0001000:6 virtio_ring.x=1 virtio_mmio.flag \
                       cthulu.channel=vsock:1024\n";
        assert_eq!(
            module_parameters(cmdline, "virtio_mmio"),
            "device=4K@0xd0000000:5 device=4K@0xd0001000:6"
        );
        assert_eq!(
            module_parameters(cmdline, "virtio-mmio"),
            module_parameters(cmdline, "virtio_mmio")
        );
        assert_eq!(module_parameters(cmdline, "vsock"), "");
    }

    #[test]
    fn defaults_without_options() {
        let (options, complaints) = parse("console=ttyS0 quiet");
        assert_eq!(options.root, None);
        assert_eq!(options.net, None);
        assert_eq!(
            options.channel,
            ChannelSpec::Virtio(DEFAULT_PORT_NAME.into())
        );
        assert!(complaints.is_empty());
    }

    #[test]
    fn every_option() {
        let (options, complaints) = parse(
            "console=ttyS0 cthulu.root=/dev/vda cthulu.net=10.0.2.15/24,10.0.2.2,10.0.2.3 cthulu.channel=vsock:1024\n",
        );
        assert!(complaints.is_empty(), "{complaints:?}");
        assert_eq!(options.root.as_deref(), Some("/dev/vda"));
        assert_eq!(
            options.net,
            Some(NetConfig {
                address: Ipv4Addr::new(10, 0, 2, 15),
                prefix: 24,
                gateway: Some(Ipv4Addr::new(10, 0, 2, 2)),
                dns: Some(Ipv4Addr::new(10, 0, 2, 3)),
            })
        );
        assert_eq!(options.channel, ChannelSpec::Vsock(1024));
        let (options, _) = parse("cthulu.channel=virtio:org.x cthulu.net=10.0.0.2/8");
        assert_eq!(options.channel, ChannelSpec::Virtio("org.x".into()));
        assert_eq!(options.net.unwrap().gateway, None);
    }

    #[test]
    fn bad_options_are_reported_and_ignored() {
        let (options, complaints) =
            parse("cthulu.net=10.0.0.2 cthulu.channel=tcp:1 cthulu.bogus=1 cthulu.net=1.2.3.4/33");
        assert_eq!(options.net, None);
        assert_eq!(
            options.channel,
            ChannelSpec::Virtio(DEFAULT_PORT_NAME.into())
        );
        assert_eq!(complaints.len(), 4, "{complaints:?}");
    }
}
