//! The bench's results and how they print.

use std::time::Duration;

use serde::Serialize;

use crate::output::Table;

#[derive(Debug, Serialize)]
pub struct BenchReport {
    /// Which server was measured.
    pub server: String,
    pub version: String,
    pub iterations: u32,
    pub backends: Vec<BackendReport>,
}

/// Median and 99th percentile of a latency, in milliseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Latency {
    pub median_ms: f64,
    pub p99_ms: f64,
    pub samples: usize,
}

impl Latency {
    /// Nearest-rank median and p99; `None` without samples.
    pub fn of(samples: &[Duration]) -> Option<Latency> {
        if samples.is_empty() {
            return None;
        }
        let mut sorted: Vec<f64> = samples
            .iter()
            .map(|sample| sample.as_secs_f64() * 1000.0)
            .collect();
        sorted.sort_by(f64::total_cmp);
        let rank = |quantile: f64| {
            let index = (quantile * sorted.len() as f64).ceil() as usize;
            sorted[index.clamp(1, sorted.len()) - 1]
        };
        Some(Latency {
            median_ms: rank(0.5),
            p99_ms: rank(0.99),
            samples: sorted.len(),
        })
    }

    fn render(&self) -> String {
        format!(
            "median {:.1} ms, p99 {:.1} ms ({} samples)",
            self.median_ms, self.p99_ms, self.samples
        )
    }
}

/// Bytes moved per second, in MiB/s.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Throughput {
    pub mib_per_second: f64,
    pub bytes: u64,
    pub seconds: f64,
}

impl Throughput {
    pub fn of(bytes: u64, elapsed: Duration) -> Throughput {
        let seconds = elapsed.as_secs_f64().max(1e-9);
        Throughput {
            mib_per_second: bytes as f64 / (1024.0 * 1024.0) / seconds,
            bytes,
            seconds,
        }
    }

    fn render(&self) -> String {
        format!(
            "{:.0} MiB/s ({} in {:.2} s)",
            self.mib_per_second,
            crate::output::bytes(self.bytes),
            self.seconds
        )
    }
}

/// Memory per idle sandbox: what the server process holds for it, and what the whole
/// machine spends on it (the server plus the sandbox's own processes, such as a namespace
/// sandbox's init or a VM: `MemTotal - MemAvailable` before and after).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct IdleMemory {
    pub requested: u32,
    pub created: u32,
    pub server_rss_before_kib: u64,
    pub server_rss_after_kib: u64,
    pub kib_per_sandbox: f64,
    pub machine_used_before_kib: u64,
    pub machine_used_after_kib: u64,
    pub machine_kib_per_sandbox: f64,
}

#[derive(Debug, Default, Serialize)]
pub struct BackendReport {
    pub backend: String,
    /// Create a sandbox, then exec `true` in it.
    pub create_to_first_exec: Option<Latency>,
    /// Exec `true` in a running sandbox.
    pub exec_round_trip: Option<Latency>,
    /// stdout of `head -c N /dev/zero` over the streaming WebSocket.
    pub stdout_stream: Option<Throughput>,
    pub upload: Option<Throughput>,
    pub download: Option<Throughput>,
    pub checkpoint: Option<Latency>,
    pub restore: Option<Latency>,
    /// Checkpoints with memory (running processes), where the backend can.
    pub memory_checkpoint: Option<Latency>,
    pub memory_restore: Option<Latency>,
    /// A microVM started from nothing (no template) to its agent's hello.
    pub cold_boot: Option<Latency>,
    pub idle_memory: Option<IdleMemory>,
    /// Measurements that failed or were skipped, and why.
    pub notes: Vec<String>,
}

impl BenchReport {
    pub fn render(&self) -> String {
        let mut text = format!("server: {} (version {})\n\n", self.server, self.version);
        let mut table = Table::new(&["backend", "measurement", "result"]);
        for backend in &self.backends {
            let mut row = |name: &str, value: Option<String>| {
                table.row(vec![
                    backend.backend.clone(),
                    name.to_owned(),
                    value.unwrap_or_else(|| "-".into()),
                ]);
            };
            row(
                "create + first exec",
                backend.create_to_first_exec.map(|latency| latency.render()),
            );
            row(
                "exec round trip",
                backend.exec_round_trip.map(|latency| latency.render()),
            );
            row(
                "stdout stream",
                backend.stdout_stream.map(|throughput| throughput.render()),
            );
            row(
                "upload",
                backend.upload.map(|throughput| throughput.render()),
            );
            row(
                "download",
                backend.download.map(|throughput| throughput.render()),
            );
            row(
                "checkpoint",
                backend.checkpoint.map(|latency| latency.render()),
            );
            row("restore", backend.restore.map(|latency| latency.render()));
            if backend.memory_checkpoint.is_some() || backend.memory_restore.is_some() {
                row(
                    "checkpoint with memory",
                    backend.memory_checkpoint.map(|latency| latency.render()),
                );
                row(
                    "restore with memory",
                    backend.memory_restore.map(|latency| latency.render()),
                );
            }
            if let Some(boot) = backend.cold_boot {
                row("cold boot to agent", Some(boot.render()));
            }
            row(
                "idle memory",
                backend.idle_memory.map(|memory| {
                    format!(
                        "{:.0} KiB per sandbox on the machine, {:.1} KiB of it in the server \
                         ({} of {} created)",
                        memory.machine_kib_per_sandbox,
                        memory.kib_per_sandbox,
                        memory.created,
                        memory.requested
                    )
                }),
            );
        }
        text.push_str(&table.render());
        for backend in &self.backends {
            for note in &backend.notes {
                text.push_str(&format!("note: {}: {note}\n", backend.backend));
            }
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let latency = Latency::of(&samples).unwrap();
        assert_eq!(latency.median_ms, 50.0);
        assert_eq!(latency.p99_ms, 99.0);
        let one = Latency::of(&[Duration::from_millis(7)]).unwrap();
        assert_eq!((one.median_ms, one.p99_ms), (7.0, 7.0));
        assert!(Latency::of(&[]).is_none());
    }

    #[test]
    fn throughput_in_mib_per_second() {
        let throughput = Throughput::of(512 * 1024 * 1024, Duration::from_secs(2));
        assert_eq!(throughput.mib_per_second, 256.0);
    }
}
