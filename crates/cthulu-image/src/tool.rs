//! Running the external programs an image build uses (apt, dpkg-deb, mkfs.ext4,
//! debootstrap, busybox): a missing program is named with its Debian package, a failure
//! carries the end of its stderr.

use std::process::Command;

use crate::error::ImageError;

/// How many trailing bytes of a failed program's stderr an error keeps.
const STDERR_TAIL_BYTES: usize = 2000;

/// The Debian package that ships `program`.
fn package_of(program: &str) -> &'static str {
    match program {
        "apt-get" | "apt-cache" => "apt",
        "dpkg-deb" => "dpkg",
        "mkfs.ext4" | "debugfs" => "e2fsprogs",
        "debootstrap" => "debootstrap",
        "qemu-system-x86_64" => "qemu-system-x86",
        _ => "the package that provides it",
    }
}

/// `command` line as a person would type it.
pub fn describe(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|part| part.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `command` (whose program is `program`) to the end; its stdout on success.
pub fn run(command: &mut Command, program: &str) -> Result<String, ImageError> {
    let output = command.output().map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            ImageError::ToolMissing {
                program: program.to_owned(),
                package: package_of(program),
            }
        } else {
            ImageError::io(format!("cannot run {}", describe(command)), source)
        }
    })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let stderr = stderr.trim();
        let tail_start = stderr
            .char_indices()
            .map(|(index, _)| index)
            .find(|index| stderr.len() - index <= STDERR_TAIL_BYTES)
            .unwrap_or(0);
        let stderr = if stderr.is_empty() {
            format!("exited with {}", output.status)
        } else {
            stderr[tail_start..].to_owned()
        };
        return Err(ImageError::CommandFailed {
            command: describe(command),
            stderr,
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_programs_name_their_package() {
        let error = run(&mut Command::new("/nonexistent/mkfs.ext4"), "mkfs.ext4").unwrap_err();
        assert_eq!(
            error.to_string(),
            "mkfs.ext4 is not installed: run `apt-get install e2fsprogs`"
        );
    }

    #[test]
    fn failures_carry_stderr() {
        let error = run(
            Command::new("sh").args(["-c", "echo out; echo broken >&2; exit 3"]),
            "sh",
        )
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "sh -c echo out; echo broken >&2; exit 3 failed: broken"
        );
        assert_eq!(
            run(Command::new("sh").args(["-c", "echo ok"]), "sh").unwrap(),
            "ok\n"
        );
    }
}
