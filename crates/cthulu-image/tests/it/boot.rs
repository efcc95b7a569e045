//! Boots an image under QEMU (microvm, TCG) and checks that the modules load and the
//! virtio-serial agent port shows up by name. The "agent" is a busybox script here; the
//! real agent does the same in Rust.

use std::io::BufRead as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support;

const QEMU: &str = "qemu-system-x86_64";
const QBOOT: &str = "/usr/share/qemu/qboot.rom";
const TIMEOUT: Duration = Duration::from_secs(60);

const TEST_AGENT: &str = r#"#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
while read -r module; do
    /bin/busybox insmod "$module" || echo "CTHULU_TEST_INSMOD_FAILED $module"
done < /etc/cthulu/modules
echo CTHULU_TEST_MODULES_OK
# Ports are announced by the host after the driver binds: wait for them a little.
for attempt in $(/bin/busybox seq 50); do
    [ -e /sys/class/virtio-ports/vport0p1/name ] && break
    /bin/busybox sleep 0.1
done
for port in /sys/class/virtio-ports/*; do
    echo "CTHULU_TEST_PORT $(/bin/busybox basename "$port") $(/bin/busybox cat "$port/name")"
done
echo "CTHULU_TEST_KERNEL $(/bin/busybox uname -r)"
/bin/busybox poweroff -f
"#;

/// The host's TSC frequency in kHz, from /proc/cpuinfo (microvm has no HPET/PM timer to
/// calibrate against; without it TCG boots hang now and then).
fn tsc_khz() -> Option<u64> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let mhz: f64 = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("cpu MHz"))?
        .trim_start_matches([' ', '\t', ':'])
        .trim()
        .parse()
        .ok()?;
    Some((mhz * 1000.0).round() as u64)
}

/// Why QEMU cannot boot images here, if it cannot.
fn qemu_unavailable() -> Option<String> {
    let qemu_found = Command::new(QEMU)
        .arg("--version")
        .output()
        .is_ok_and(|output| output.status.success());
    if !qemu_found || !std::path::Path::new(QBOOT).exists() {
        return Some(
            "qemu-system-x86_64 (with qboot) is not installed: \
             apt-get install -t bookworm-backports qemu-system-x86"
                .into(),
        );
    }
    support::unavailable()
}

/// Builds an image in `directory` with `agent` as `/init`; `None` (after printing a
/// SKIP) when the Debian packages cannot be fetched.
fn build_image(
    directory: &std::path::Path,
    agent: std::path::PathBuf,
    allow_script: bool,
) -> Option<cthulu_image::Image> {
    let mut options = support::options(&directory.join("images"));
    options.agent = agent;
    options.allow_script_agent = allow_script;
    match cthulu_image::build(&options, &mut |_| {}) {
        Ok(image) => Some(image),
        Err(error @ cthulu_image::ImageError::CommandFailed { .. }) => {
            support::skip(
                "qemu",
                &format!("cannot fetch the Debian packages: {error}"),
            );
            None
        }
        Err(error) => panic!("build failed: {error}"),
    }
}

/// What a boot printed on the serial console, and whether QEMU exited by itself.
struct Boot {
    console: String,
    exited: bool,
}

/// Boots `image` with the agent's virtio-serial port until the guest powers off, a line
/// containing `until` appears on the console, or [`TIMEOUT`] passes.
fn boot(image: &cthulu_image::Image, directory: &std::path::Path, until: &str) -> Boot {
    let mut append = String::from("console=ttyS0 reboot=t panic=-1 quiet");
    if let Some(khz) = tsc_khz() {
        append.push_str(&format!(" tsc_early_khz={khz}"));
    }
    let socket = directory.join("agent.sock");
    let mut child = Command::new(QEMU)
        .args(["-M", "microvm,isa-serial=on,rtc=on", "-bios", QBOOT])
        .args(["-accel", "tcg", "-cpu", "max", "-m", "256", "-smp", "1"])
        .args(["-nodefaults", "-no-user-config", "-display", "none"])
        .arg("-no-reboot")
        .arg("-kernel")
        .arg(image.kernel())
        .arg("-initrd")
        .arg(image.initramfs())
        .args(["-append", &append, "-serial", "stdio"])
        .args(["-device", "virtio-serial-device", "-chardev"])
        .arg(format!(
            "socket,id=agent,path={},server=on,wait=off",
            socket.display()
        ))
        .args([
            "-device",
            "virtserialport,chardev=agent,name=org.cthulu.agent",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("qemu starts");
    let stdout = child.stdout.take().unwrap();
    let (lines_sender, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines_sender.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + TIMEOUT;
    let mut console = String::new();
    let mut exited = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left.min(Duration::from_millis(200))) {
            Ok(line) => {
                let found = line.contains(until);
                console.push_str(&line);
                console.push('\n');
                if found {
                    break;
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                exited = child.wait().is_ok();
                break;
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) if left.is_zero() => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    println!("console:\n{console}");
    Boot { console, exited }
}

#[test]
fn the_image_boots_loads_its_modules_and_sees_the_agent_port() {
    if let Some(reason) = qemu_unavailable() {
        return support::skip("qemu", &reason);
    }
    let directory = tempfile::tempdir().unwrap();
    let agent = directory.path().join("agent.sh");
    std::fs::write(&agent, TEST_AGENT).unwrap();
    let Some(image) = build_image(directory.path(), agent, true) else {
        return;
    };
    let Boot { console, exited } = boot(&image, directory.path(), "CTHULU_TEST_KERNEL");
    assert!(console.contains("CTHULU_TEST_MODULES_OK"), "no marker");
    assert!(
        !console.contains("CTHULU_TEST_INSMOD_FAILED"),
        "a module failed to load"
    );
    assert!(
        console
            .lines()
            .any(|line| line.starts_with("CTHULU_TEST_PORT ")
                && line.trim_end().ends_with(" org.cthulu.agent")),
        "the agent port did not show up"
    );
    assert!(
        console.contains(&format!(
            "CTHULU_TEST_KERNEL {}",
            image.manifest().kernel_version
        )),
        "no kernel line (exited by itself: {exited})"
    );
}

/// The real guest agent (`$CTHULU_AGENT`, built by scripts/build-agent) as `/init`: it
/// loads the modules and finds its port by itself.
#[test]
fn the_real_agent_starts_in_the_image() {
    let Some(agent) = std::env::var_os(cthulu_image::AGENT_ENV).filter(|value| !value.is_empty())
    else {
        return support::skip(
            "qemu-agent",
            "CTHULU_AGENT is not set (export CTHULU_AGENT=$(scripts/build-agent))",
        );
    };
    if let Some(reason) = qemu_unavailable() {
        return support::skip("qemu-agent", &reason);
    }
    let directory = tempfile::tempdir().unwrap();
    let Some(image) = build_image(directory.path(), agent.into(), false) else {
        return;
    };
    let Boot { console, exited } = boot(&image, directory.path(), "cthulu-agent ready");
    assert!(!exited, "the guest stopped:\n{console}");
    assert!(
        console.contains("virtio port org.cthulu.agent at /dev/vport0p1"),
        "the agent did not find its port"
    );
    assert!(
        console.contains("cthulu-agent ready"),
        "the agent is not ready"
    );
}
