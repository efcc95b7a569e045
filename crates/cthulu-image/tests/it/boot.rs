//! Boots an image under QEMU (microvm, TCG) and checks that the modules load and the
//! virtio-serial agent port shows up by name. The "agent" is a busybox script here; the
//! real agent does the same in Rust.

use std::io::Read as _;
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

#[test]
fn the_image_boots_loads_its_modules_and_sees_the_agent_port() {
    let qemu_found = Command::new(QEMU)
        .arg("--version")
        .output()
        .is_ok_and(|output| output.status.success());
    if !qemu_found || !std::path::Path::new(QBOOT).exists() {
        return support::skip(
            "qemu",
            "qemu-system-x86_64 (with qboot) is not installed: apt-get install -t bookworm-backports qemu-system-x86",
        );
    }
    if let Some(reason) = support::unavailable() {
        return support::skip("qemu", &reason);
    }
    let directory = tempfile::tempdir().unwrap();
    let agent = directory.path().join("agent.sh");
    std::fs::write(&agent, TEST_AGENT).unwrap();
    let mut options = support::options(&directory.path().join("images"));
    options.agent = agent;
    options.allow_script_agent = true;
    let image = match cthulu_image::build(&options, &mut |_| {}) {
        Ok(image) => image,
        Err(error @ cthulu_image::ImageError::CommandFailed { .. }) => {
            return support::skip(
                "qemu",
                &format!("cannot fetch the Debian packages: {error}"),
            )
        }
        Err(error) => panic!("build failed: {error}"),
    };

    let mut append = String::from("console=ttyS0 reboot=t panic=-1 quiet");
    if let Some(khz) = tsc_khz() {
        append.push_str(&format!(" tsc_early_khz={khz}"));
    }
    let socket = directory.path().join("agent.sock");
    let mut child = Command::new(QEMU)
        .args(["-M", "microvm,isa-serial=on,rtc=on", "-bios", QBOOT])
        .args(["-accel", "tcg", "-cpu", "max", "-m", "256", "-smp", "1"])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ])
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
        .stderr(Stdio::piped())
        .spawn()
        .expect("qemu starts");
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut console = Vec::new();
        let _ = stdout.read_to_end(&mut console);
        String::from_utf8_lossy(&console).into_owned()
    });
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let console = reader.join().unwrap();
    let mut stderr = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut stderr);
    println!("console:\n{console}\nqemu stderr:\n{stderr}");
    assert!(
        status.is_some(),
        "the guest did not power off within {TIMEOUT:?}"
    );
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
    assert!(console.contains(&format!(
        "CTHULU_TEST_KERNEL {}",
        image.manifest().kernel_version
    )));
}
