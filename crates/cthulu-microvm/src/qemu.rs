//! Starting `qemu-system-x86_64 -M microvm` and finding it again: the accelerator chosen
//! at run time, the command line, and the process (daemonized, so the VM outlives the
//! server; its pid in a file next to its sockets).

use std::path::{Path, PathBuf};
use std::time::Duration;

/// File names inside a VM's directory.
pub const QMP_SOCKET: &str = "qmp.sock";
pub const AGENT_SOCKET: &str = "agent.sock";
pub const CONSOLE_LOG: &str = "console.log";
pub const PID_FILE: &str = "qemu.pid";
/// The VM's root disk: a qcow2 overlay (copy-on-write) over its template's disk.
pub const DISK_FILE: &str = "disk.qcow2";

/// What a finished template's directory does not keep.
pub const SCRATCH_FILES: [&str; 3] = [QMP_SOCKET, AGENT_SOCKET, PID_FILE];

/// The virtio-serial port name the agent looks for.
pub const AGENT_PORT_NAME: &str = "org.cthulu.agent";

/// Which accelerator runs the guest's CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware KVM.
    Kvm,
    /// QEMU's software CPU: slow but runs anywhere.
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// How this machine runs QEMU, found once at start.
#[derive(Debug, Clone)]
pub struct Qemu {
    pub binary: PathBuf,
    /// qboot when installed (0.4 s faster than SeaBIOS under TCG); QEMU's default else.
    pub firmware: Option<PathBuf>,
    pub accel: Accel,
    /// Why the accelerator is what it is, for `/api/v1/info` and the logs.
    pub accel_reason: String,
    /// The host TSC frequency, passed as `tsc_early_khz`: without it about one boot in
    /// five hangs calibrating the TSC (microvm has neither HPET nor PM timer).
    pub tsc_khz: Option<u64>,
    /// `qemu-img`, which makes the copy-on-write overlays of root disks (next to QEMU or
    /// on PATH; images without a root filesystem do not need it).
    pub img: Option<PathBuf>,
}

impl Qemu {
    /// Finds QEMU and picks the accelerator: hardware KVM when `/dev/kvm` opens and is not
    /// PVM (a software nested hypervisor, `/sys/module/kvm_pvm`, on which stock guest
    /// kernels do not boot); TCG otherwise. `Err` says why QEMU cannot run here.
    pub fn detect(binary: Option<&Path>) -> Result<Qemu, String> {
        let binary = match binary {
            Some(binary) => binary.to_path_buf(),
            None => find_in_path("qemu-system-x86_64").ok_or_else(|| {
                "qemu-system-x86_64 is not installed: install it with `apt-get install -t \
                 bookworm-backports qemu-system-x86` (QEMU 10 from Debian's backports)"
                    .to_string()
            })?,
        };
        if !binary.is_file() {
            return Err(format!("{} does not exist", binary.display()));
        }
        let (accel, accel_reason) = choose_accel();
        let firmware =
            Some(PathBuf::from("/usr/share/qemu/qboot.rom")).filter(|path| path.is_file());
        let img = binary
            .parent()
            .map(|dir| dir.join("qemu-img"))
            .filter(|path| path.is_file())
            .or_else(|| find_in_path("qemu-img"));
        Ok(Qemu {
            binary,
            firmware,
            accel,
            accel_reason,
            tsc_khz: host_tsc_khz(),
            img,
        })
    }

    /// Makes `overlay`, a qcow2 image whose unwritten blocks read from `backing` (of
    /// `backing_format`, `raw` or `qcow2`). A relative `backing` is resolved from the
    /// overlay's directory (so a template's directory can be renamed into place).
    pub async fn create_overlay(
        &self,
        backing: &Path,
        backing_format: &str,
        overlay: &Path,
    ) -> Result<(), String> {
        let img = self.img.as_ref().ok_or_else(|| {
            "qemu-img is not installed (the image has a root disk, whose copy-on-write \
             overlays it makes): install it with `apt-get install -t bookworm-backports \
             qemu-utils`"
                .to_string()
        })?;
        let output = tokio::process::Command::new(img)
            .args(overlay_args(backing, backing_format, overlay))
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|error| format!("running {}: {error}", img.display()))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "qemu-img could not make the disk overlay {} ({}): {}",
                overlay.display(),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ))
        }
    }
}

/// The `qemu-img` arguments that make a qcow2 `overlay` over `backing`.
pub fn overlay_args(backing: &Path, backing_format: &str, overlay: &Path) -> Vec<String> {
    vec![
        "create".into(),
        "-q".into(),
        "-f".into(),
        "qcow2".into(),
        "-F".into(),
        backing_format.into(),
        "-b".into(),
        backing.display().to_string(),
        overlay.display().to_string(),
    ]
}

pub(crate) fn choose_accel() -> (Accel, String) {
    let kvm = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm");
    match kvm {
        Err(error) => (
            Accel::Tcg,
            format!("no usable /dev/kvm ({error}): software CPU (TCG)"),
        ),
        Ok(_) if Path::new("/sys/module/kvm_pvm").exists() => (
            Accel::Tcg,
            "/dev/kvm is PVM (kvm_pvm), which boots only PVM guest kernels: software CPU (TCG)"
                .into(),
        ),
        Ok(_) => (Accel::Kvm, "hardware KVM".into()),
    }
}

/// The TSC frequency in kHz, from the kernel's log line or `/proc/cpuinfo`.
fn host_tsc_khz() -> Option<u64> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let mhz: f64 = cpuinfo
        .lines()
        .find(|line| line.starts_with("cpu MHz"))?
        .split(':')
        .nth(1)?
        .trim()
        .parse()
        .ok()?;
    Some((mhz * 1000.0).round() as u64)
}

fn find_in_path(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(program))
        .find(|candidate| candidate.is_file())
}

/// Where the guest's RAM lives.
#[derive(Debug, Clone)]
pub enum Ram {
    /// A file mapped shared: the VM writes into it. A template is booted this way, so its
    /// snapshot needs no RAM in the migration stream (`x-ignore-shared`).
    Shared(PathBuf),
    /// A template's file mapped private: copy-on-write, so clones share the template's
    /// pages until they write them, and never change the file.
    Private(PathBuf),
}

/// What one VM is made of.
#[derive(Debug, Clone)]
pub struct Machine {
    /// Holds its sockets, console log and pid file.
    pub dir: PathBuf,
    pub memory_mib: u32,
    pub vcpus: u32,
    /// User-mode networking to the outside (`network: full`); none otherwise.
    pub network: bool,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub ram: Ram,
    /// The root disk (a qcow2 overlay), for images with a root filesystem: the agent
    /// switches into it (`cthulu.root=/dev/vda`).
    pub disk: Option<PathBuf>,
    /// Waits for `migrate-incoming` instead of booting.
    pub incoming: bool,
}

/// The guest's static address under QEMU's user-mode network.
const GUEST_NET: &str = "10.0.2.15/24,10.0.2.2,10.0.2.3";

/// The kernel command line every microVM gets (QEMU adds its timer option, Firecracker
/// its devices and the vsock channel).
pub fn kernel_args(machine: &Machine) -> Vec<String> {
    let mut args = vec![
        "console=ttyS0".to_string(),
        "reboot=t".into(),
        "panic=-1".into(),
        "quiet".into(),
        // The crypto self-tests check the kernel's own algorithm implementations at every
        // boot: about 0.9 s under TCG here, and no protection for the guest.
        "cryptomgr.notests".into(),
    ];
    if machine.network {
        args.push(format!("cthulu.net={GUEST_NET}"));
    }
    if machine.disk.is_some() {
        args.push("cthulu.root=/dev/vda".into());
    }
    args
}

impl Qemu {
    /// The command line of `machine`.
    pub fn command_line(&self, machine: &Machine) -> Vec<String> {
        let dir = &machine.dir;
        let path = |name: &str| dir.join(name).display().to_string();
        let mut append = kernel_args(machine);
        if let Some(khz) = self.tsc_khz {
            append.push(format!("tsc_early_khz={khz}"));
        }
        let mut args: Vec<String> = vec![
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-display".into(),
            "none".into(),
            "-no-reboot".into(),
            "-machine".into(),
            "microvm,isa-serial=on,rtc=on,memory-backend=ram0".into(),
        ];
        if let Some(firmware) = &self.firmware {
            args.extend(["-bios".into(), firmware.display().to_string()]);
        }
        let (cpu, accel) = match self.accel {
            // Never bare `-cpu host` on PVM; this branch is real hardware KVM only.
            Accel::Kvm => ("host", "kvm"),
            Accel::Tcg => ("max", "tcg"),
        };
        let (mem_path, share) = match &machine.ram {
            Ram::Shared(path) => (path, "on"),
            Ram::Private(path) => (path, "off"),
        };
        args.extend([
            "-accel".into(),
            accel.into(),
            "-cpu".into(),
            cpu.into(),
            "-m".into(),
            format!("{}M", machine.memory_mib),
            "-smp".into(),
            machine.vcpus.to_string(),
            "-object".into(),
            format!(
                "memory-backend-file,id=ram0,size={}M,mem-path={},share={share}",
                machine.memory_mib,
                mem_path.display()
            ),
            "-kernel".into(),
            machine.kernel.display().to_string(),
            "-initrd".into(),
            machine.initramfs.display().to_string(),
            "-append".into(),
            append.join(" "),
            "-serial".into(),
            format!("file:{}", path(CONSOLE_LOG)),
            "-device".into(),
            "virtio-serial-device".into(),
            "-chardev".into(),
            format!(
                "socket,id=agent,path={},server=on,wait=off",
                path(AGENT_SOCKET)
            ),
            "-device".into(),
            format!("virtserialport,chardev=agent,name={AGENT_PORT_NAME}"),
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", path(QMP_SOCKET)),
        ]);
        if let Some(disk) = &machine.disk {
            // A template and its clones list the same devices in the same order, as the
            // saved device state requires; only the overlay file differs.
            args.extend([
                "-drive".into(),
                format!(
                    "file={},if=none,id=root,format=qcow2,discard=unmap",
                    disk.display()
                ),
                "-device".into(),
                "virtio-blk-device,drive=root".into(),
            ]);
        }
        if machine.network {
            args.extend([
                "-netdev".into(),
                "user,id=net0".into(),
                "-device".into(),
                "virtio-net-device,netdev=net0".into(),
            ]);
        }
        if machine.incoming {
            args.extend(["-incoming".into(), "defer".into()]);
        }
        args.extend(["-daemonize".into(), "-pidfile".into(), path(PID_FILE)]);
        args
    }

    /// Starts QEMU for `machine` and returns its pid once it runs in the background (QEMU's
    /// `-daemonize` returns when the VM is set up, so its sockets exist).
    pub async fn launch(&self, machine: &Machine) -> Result<u32, String> {
        let output = tokio::process::Command::new(&self.binary)
            .args(self.command_line(machine))
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(Duration::from_secs(60), output)
            .await
            .map_err(|_| "QEMU did not start within 60 s".to_string())?
            .map_err(|error| format!("running {}: {error}", self.binary.display()))?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            return Err(format!(
                "QEMU failed to start ({}): {}",
                output.status,
                stderr.trim()
            ));
        }
        read_pid(&machine.dir).ok_or_else(|| "QEMU started but wrote no pid file".to_string())
    }
}

/// The pid in a VM directory's pid file (QEMU's or Firecracker's).
pub fn read_pid(dir: &Path) -> Option<u32> {
    [PID_FILE, crate::firecracker::PID_FILE]
        .iter()
        .find_map(|name| std::fs::read_to_string(dir.join(name)).ok())?
        .trim()
        .parse()
        .ok()
}

/// Whether `pid` is the VMM (QEMU or Firecracker) of the VM in `dir`, not a process that
/// reused the pid: its command line names a socket in `dir`.
pub fn is_running(pid: u32, dir: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let needle = format!("{}/", dir.display());
    let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            !stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false);
    alive
        && cmdline
            .windows(needle.len())
            .any(|window| window == needle.as_bytes())
}

/// Kills the QEMU of `dir` (if it runs) and waits until it is gone.
pub async fn kill(pid: u32, dir: &Path) {
    if !is_running(pid, dir) {
        return;
    }
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
    for _ in 0..500 {
        if !is_running(pid, dir) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tracing::warn!(pid, dir = %dir.display(), "QEMU did not die within 5 s of SIGKILL");
}

/// The last `lines` lines of the VM's console, for errors about a guest that never came up.
pub fn console_tail(dir: &Path, lines: usize) -> String {
    let console = std::fs::read(dir.join(CONSOLE_LOG)).unwrap_or_default();
    let text = String::from_utf8_lossy(&console);
    let all: Vec<&str> = text
        .lines()
        .filter(|line| !line.trim().is_empty())
        .collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qemu(accel: Accel) -> Qemu {
        Qemu {
            binary: "/usr/bin/qemu-system-x86_64".into(),
            firmware: Some("/usr/share/qemu/qboot.rom".into()),
            accel,
            accel_reason: String::new(),
            tsc_khz: Some(2_596_144),
            img: None,
        }
    }

    fn machine(network: bool, incoming: bool, ram: Ram) -> Machine {
        Machine {
            dir: "/state/vm1".into(),
            memory_mib: 256,
            vcpus: 1,
            network,
            kernel: "/images/default/vmlinuz".into(),
            initramfs: "/images/default/initramfs.cpio.gz".into(),
            ram,
            disk: None,
            incoming,
        }
    }

    fn has_pair(args: &[String], flag: &str, value: &str) -> bool {
        args.windows(2)
            .any(|pair| pair[0] == flag && pair[1] == value)
    }

    #[test]
    fn a_tcg_command_line_has_the_pitfall_workarounds() {
        let args =
            qemu(Accel::Tcg).command_line(&machine(false, false, Ram::Shared("/t/ram".into())));
        assert!(has_pair(&args, "-accel", "tcg"));
        assert!(has_pair(&args, "-cpu", "max"));
        assert!(has_pair(&args, "-bios", "/usr/share/qemu/qboot.rom"));
        let append = &args[args.iter().position(|arg| arg == "-append").unwrap() + 1];
        assert!(append.contains("tsc_early_khz=2596144"), "{append}");
        assert!(append.contains("cryptomgr.notests"), "{append}");
        assert!(!append.contains("cthulu.net"), "no network asked: {append}");
        assert!(!args.iter().any(|arg| arg.starts_with("user,")), "{args:?}");
        assert!(has_pair(
            &args,
            "-object",
            "memory-backend-file,id=ram0,size=256M,mem-path=/t/ram,share=on"
        ));
        assert!(has_pair(
            &args,
            "-device",
            "virtserialport,chardev=agent,name=org.cthulu.agent"
        ));
        assert!(has_pair(
            &args,
            "-chardev",
            "socket,id=agent,path=/state/vm1/agent.sock,server=on,wait=off"
        ));
        assert!(has_pair(&args, "-pidfile", "/state/vm1/qemu.pid"));
        assert!(args.contains(&"-daemonize".to_string()));
        assert!(!args.contains(&"-incoming".to_string()));
    }

    #[test]
    fn a_clone_maps_the_template_private_and_waits_for_its_state() {
        let args =
            qemu(Accel::Kvm).command_line(&machine(true, true, Ram::Private("/t/ram".into())));
        assert!(has_pair(&args, "-accel", "kvm"));
        assert!(has_pair(&args, "-cpu", "host"));
        assert!(has_pair(
            &args,
            "-object",
            "memory-backend-file,id=ram0,size=256M,mem-path=/t/ram,share=off"
        ));
        assert!(has_pair(&args, "-incoming", "defer"));
        assert!(has_pair(&args, "-netdev", "user,id=net0"));
        let append = &args[args.iter().position(|arg| arg == "-append").unwrap() + 1];
        assert!(append.contains("cthulu.net=10.0.2.15/24"), "{append}");
        assert!(!append.contains("cthulu.root"), "no disk: {append}");
        assert!(!args.contains(&"-drive".to_string()), "{args:?}");
    }

    #[test]
    fn a_vm_with_a_root_disk_boots_into_its_overlay() {
        let mut with_disk = machine(false, true, Ram::Private("/t/ram".into()));
        with_disk.disk = Some("/state/vm1/disk.qcow2".into());
        let args = qemu(Accel::Tcg).command_line(&with_disk);
        assert!(has_pair(
            &args,
            "-drive",
            "file=/state/vm1/disk.qcow2,if=none,id=root,format=qcow2,discard=unmap"
        ));
        assert!(has_pair(&args, "-device", "virtio-blk-device,drive=root"));
        let append = &args[args.iter().position(|arg| arg == "-append").unwrap() + 1];
        assert!(append.contains("cthulu.root=/dev/vda"), "{append}");
    }

    #[test]
    fn an_overlay_names_its_backing_file_and_format() {
        assert_eq!(
            overlay_args(
                Path::new("/t/disk.qcow2"),
                "qcow2",
                Path::new("/s/disk.qcow2")
            ),
            [
                "create",
                "-q",
                "-f",
                "qcow2",
                "-F",
                "qcow2",
                "-b",
                "/t/disk.qcow2",
                "/s/disk.qcow2"
            ]
        );
    }
}
