//! The measurements of one backend. Each one that fails leaves a note and the others
//! still run; every sandbox made is destroyed.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use cthulu_client::{CthuluClient, ExecEvent, PutFileOptions};
use cthulu_types::{
    BackendInfo, CheckpointRequest, CheckpointSupport, CreateSandboxRequest, ExecRequest,
};
use futures_util::{StreamExt as _, TryStreamExt as _};
use indicatif::{ProgressBar, ProgressStyle};

use super::report::{BackendReport, IdleMemory, Latency, Throughput};

/// Idle sandboxes are created (and destroyed) this many at a time.
const PARALLEL_CREATES: usize = 8;
/// The file the transfer measurements upload and download.
const TRANSFER_PATH: &str = "/workspace/cthulu-bench.bin";

pub struct BackendBench<'a> {
    pub client: &'a CthuluClient,
    pub backend: &'a BackendInfo,
    pub iterations: u32,
    pub transfer_bytes: u64,
    pub idle_sandboxes: u32,
    /// Whether the server runs in this process, so its RSS is ours.
    pub measure_memory: bool,
}

impl BackendBench<'_> {
    pub async fn run(&self) -> BackendReport {
        let mut report = BackendReport {
            backend: self.backend.kind.to_string(),
            ..BackendReport::default()
        };
        let name = self.backend.kind;
        eprintln!("bench: {name}: create + first exec ×{}", self.iterations);
        match self.create_to_first_exec().await {
            Ok(latency) => report.create_to_first_exec = latency,
            Err(error) => report.notes.push(format!("create + first exec: {error:#}")),
        }
        match self.create().await {
            Ok(sandbox_id) => {
                self.on_one_sandbox(&sandbox_id, &mut report).await;
                if let Err(error) = self.client.delete_sandbox(&sandbox_id).await {
                    report.notes.push(format!("destroy {sandbox_id}: {error}"));
                }
            }
            Err(error) => report.notes.push(format!("create: {error:#}")),
        }
        if !self.measure_memory {
            report
                .notes
                .push("idle memory: only measured on the in-process server (no --url)".into());
        } else if self.idle_sandboxes > 0 {
            eprintln!("bench: {name}: {} idle sandboxes", self.idle_sandboxes);
            match self.idle_memory().await {
                Ok((memory, failure)) => {
                    report.idle_memory = Some(memory);
                    if let Some(failure) = failure {
                        report.notes.push(format!("idle memory: {failure}"));
                    }
                }
                Err(error) => report.notes.push(format!("idle memory: {error:#}")),
            }
        }
        report
    }

    /// The measurements made on one running sandbox.
    async fn on_one_sandbox(&self, sandbox_id: &str, report: &mut BackendReport) {
        let name = self.backend.kind;
        eprintln!("bench: {name}: exec round trip ×{}", self.iterations);
        match self.exec_round_trip(sandbox_id).await {
            Ok(latency) => report.exec_round_trip = latency,
            Err(error) => report.notes.push(format!("exec round trip: {error:#}")),
        }
        let mib = self.transfer_bytes / (1024 * 1024);
        eprintln!("bench: {name}: stdout stream of {mib} MiB");
        match self.stdout_stream(sandbox_id).await {
            Ok(throughput) => report.stdout_stream = Some(throughput),
            Err(error) => report.notes.push(format!("stdout stream: {error:#}")),
        }
        eprintln!("bench: {name}: upload and download of {mib} MiB");
        match self.upload(sandbox_id).await {
            Ok(throughput) => {
                report.upload = Some(throughput);
                match self.download(sandbox_id).await {
                    Ok(throughput) => report.download = Some(throughput),
                    Err(error) => report.notes.push(format!("download: {error:#}")),
                }
                let _ = self
                    .client
                    .remove_file(sandbox_id, TRANSFER_PATH, false)
                    .await;
            }
            Err(error) => report.notes.push(format!("upload: {error:#}")),
        }
        if self.backend.capabilities.checkpoint == CheckpointSupport::None {
            report
                .notes
                .push("checkpoint: the backend cannot checkpoint".into());
        } else {
            eprintln!("bench: {name}: checkpoint and restore ×{}", self.iterations);
            match self.checkpoint_restore(sandbox_id, false).await {
                Ok((checkpoint, restore)) => {
                    report.checkpoint = checkpoint;
                    report.restore = restore;
                }
                Err(error) => report.notes.push(format!("checkpoint: {error:#}")),
            }
            if self.backend.capabilities.checkpoint == CheckpointSupport::FilesystemAndMemory {
                eprintln!(
                    "bench: {name}: checkpoint and restore with memory ×{}",
                    self.iterations
                );
                match self.checkpoint_restore(sandbox_id, true).await {
                    Ok((checkpoint, restore)) => {
                        report.memory_checkpoint = checkpoint;
                        report.memory_restore = restore;
                    }
                    Err(error) => report
                        .notes
                        .push(format!("checkpoint with memory: {error:#}")),
                }
            }
        }
    }

    async fn create(&self) -> anyhow::Result<String> {
        let request = CreateSandboxRequest {
            backend: Some(self.backend.kind),
            timeout_secs: Some(3600),
            labels: [("cthulu.bench".to_owned(), "true".to_owned())].into(),
            ..CreateSandboxRequest::default()
        };
        let sandbox = self
            .client
            .create_sandbox(&request)
            .await
            .context("cannot create a sandbox")?;
        Ok(sandbox.id.to_string())
    }

    async fn exec_true(&self, sandbox_id: &str) -> anyhow::Result<()> {
        let response = self
            .client
            .exec(sandbox_id, &ExecRequest::argv(["true"]))
            .await
            .context("exec true failed")?;
        anyhow::ensure!(
            response.exit_code == Some(0),
            "`true` exited with {:?}",
            response.exit_code
        );
        Ok(())
    }

    async fn create_to_first_exec(&self) -> anyhow::Result<Option<Latency>> {
        let bar = progress(u64::from(self.iterations));
        let mut samples = Vec::new();
        for _ in 0..self.iterations {
            let started = Instant::now();
            let sandbox_id = self.create().await?;
            let executed = self.exec_true(&sandbox_id).await;
            let elapsed = started.elapsed();
            self.client
                .delete_sandbox(&sandbox_id)
                .await
                .with_context(|| format!("cannot destroy sandbox {sandbox_id}"))?;
            executed?;
            samples.push(elapsed);
            bar.inc(1);
        }
        bar.finish_and_clear();
        Ok(Latency::of(&samples))
    }

    async fn exec_round_trip(&self, sandbox_id: &str) -> anyhow::Result<Option<Latency>> {
        self.exec_true(sandbox_id).await?;
        let mut samples = Vec::new();
        for _ in 0..self.iterations {
            let started = Instant::now();
            self.exec_true(sandbox_id).await?;
            samples.push(started.elapsed());
        }
        Ok(Latency::of(&samples))
    }

    async fn stdout_stream(&self, sandbox_id: &str) -> anyhow::Result<Throughput> {
        let request = ExecRequest {
            max_output_bytes: Some(self.transfer_bytes + 1),
            ..ExecRequest::argv([
                "head".to_owned(),
                "-c".to_owned(),
                self.transfer_bytes.to_string(),
                "/dev/zero".to_owned(),
            ])
        };
        let started = Instant::now();
        let mut session = self
            .client
            .exec_stream(sandbox_id, &request)
            .await
            .context("cannot start the streaming exec")?;
        let mut received: u64 = 0;
        let exit = loop {
            match session.next_event().await? {
                Some(ExecEvent::Stdout(data)) => received += data.len() as u64,
                Some(ExecEvent::Stderr(_)) => {}
                Some(ExecEvent::Exit(exit)) => break exit,
                None => anyhow::bail!("the stream ended without an exit"),
            }
        };
        let elapsed = started.elapsed();
        anyhow::ensure!(
            exit.exit_code == Some(0) && received == self.transfer_bytes,
            "received {received} of {} bytes, exit {exit:?}",
            self.transfer_bytes
        );
        Ok(Throughput::of(received, elapsed))
    }

    async fn upload(&self, sandbox_id: &str) -> anyhow::Result<Throughput> {
        // Not all zeros, in case anything on the way compresses.
        let pattern: Vec<u8> = (0..=255u8).cycle().take(1024 * 1024).collect();
        let reader = cycle_reader(pattern, self.transfer_bytes);
        let started = Instant::now();
        let written = self
            .client
            .put_file(sandbox_id, TRANSFER_PATH, reader, PutFileOptions::default())
            .await?;
        let elapsed = started.elapsed();
        anyhow::ensure!(
            written.size == self.transfer_bytes,
            "the server stored {} of {} bytes",
            written.size,
            self.transfer_bytes
        );
        Ok(Throughput::of(written.size, elapsed))
    }

    async fn download(&self, sandbox_id: &str) -> anyhow::Result<Throughput> {
        let started = Instant::now();
        let file = self.client.get_file(sandbox_id, TRANSFER_PATH).await?;
        let received = file
            .into_stream()
            .try_fold(0u64, |total, chunk| async move {
                Ok(total + chunk.len() as u64)
            })
            .await?;
        let elapsed = started.elapsed();
        anyhow::ensure!(
            received == self.transfer_bytes,
            "received {received} of {} bytes",
            self.transfer_bytes
        );
        Ok(Throughput::of(received, elapsed))
    }

    async fn checkpoint_restore(
        &self,
        sandbox_id: &str,
        memory: bool,
    ) -> anyhow::Result<(Option<Latency>, Option<Latency>)> {
        let client = self.client;
        let (mut checkpoints, mut restores) = (Vec::new(), Vec::new());
        let pattern = b"cthulu bench checkpoint\n".repeat(4096);
        for iteration in 0..self.iterations {
            let path = format!("/workspace/checkpoint-{iteration}.txt");
            client
                .put_file(
                    sandbox_id,
                    &path,
                    std::io::Cursor::new(pattern.clone()),
                    PutFileOptions::default(),
                )
                .await?;
            let started = Instant::now();
            let checkpoint = client
                .create_checkpoint(
                    sandbox_id,
                    &CheckpointRequest {
                        memory,
                        ..CheckpointRequest::default()
                    },
                )
                .await?;
            checkpoints.push(started.elapsed());
            let started = Instant::now();
            client
                .restore_checkpoint(sandbox_id, &checkpoint.id)
                .await?;
            restores.push(started.elapsed());
            let _ = client.delete_checkpoint(sandbox_id, &checkpoint.id).await;
        }
        Ok((Latency::of(&checkpoints), Latency::of(&restores)))
    }

    /// RSS of this process before and after creating the idle sandboxes. Creation stops at
    /// the first failure, which is returned beside the measurement.
    async fn idle_memory(&self) -> anyhow::Result<(IdleMemory, Option<String>)> {
        let before = resident_kib()?;
        let machine_before = machine_used_kib()?;
        let bar = progress(u64::from(self.idle_sandboxes));
        let mut created = Vec::new();
        let mut failure = None;
        let mut creates = futures_util::stream::iter(0..self.idle_sandboxes)
            .map(|_| self.create())
            .buffer_unordered(PARALLEL_CREATES);
        while let Some(result) = creates.next().await {
            match result {
                Ok(sandbox_id) => {
                    created.push(sandbox_id);
                    bar.inc(1);
                }
                Err(error) => {
                    failure = Some(format!(
                        "stopped after {} sandboxes: {error:#}",
                        created.len()
                    ));
                    break;
                }
            }
        }
        drop(creates);
        bar.finish_and_clear();
        // Let anything the creates started settle before reading the RSS.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = resident_kib()?;
        let machine_after = machine_used_kib()?;
        let count = created.len() as u32;
        let per_sandbox = |before: u64, after: u64| {
            if count == 0 {
                0.0
            } else {
                after.saturating_sub(before) as f64 / f64::from(count)
            }
        };
        futures_util::stream::iter(created)
            .for_each_concurrent(PARALLEL_CREATES, |sandbox_id| async move {
                if let Err(error) = self.client.delete_sandbox(&sandbox_id).await {
                    tracing::warn!("cannot destroy sandbox {sandbox_id}: {error}");
                }
            })
            .await;
        Ok((
            IdleMemory {
                requested: self.idle_sandboxes,
                created: count,
                server_rss_before_kib: before,
                server_rss_after_kib: after,
                kib_per_sandbox: per_sandbox(before, after),
                machine_used_before_kib: machine_before,
                machine_used_after_kib: machine_after,
                machine_kib_per_sandbox: per_sandbox(machine_before, machine_after),
            },
            failure,
        ))
    }
}

/// A bar on stderr for a phase of `total` steps (hidden when stderr is not a terminal).
fn progress(total: u64) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("  [{bar:30}] {pos}/{len} {elapsed}")
            .expect("the template is valid")
            .progress_chars("=> "),
    );
    bar
}

/// `total` bytes of `pattern` repeated, as an `AsyncRead`.
fn cycle_reader(pattern: Vec<u8>, total: u64) -> impl tokio::io::AsyncRead + Send + Unpin {
    let chunk = bytes::Bytes::from(pattern);
    let chunk_len = chunk.len() as u64;
    let chunks = futures_util::stream::unfold(0u64, move |sent| {
        let chunk = chunk.clone();
        async move {
            if sent >= total {
                return None;
            }
            let take = chunk_len.min(total - sent);
            Some((
                Ok::<_, std::io::Error>(chunk.slice(..take as usize)),
                sent + take,
            ))
        }
    });
    tokio_util::io::StreamReader::new(Box::pin(chunks))
}

/// This process's resident set size, from `/proc/self/status`.
fn resident_kib() -> anyhow::Result<u64> {
    kib_field("/proc/self/status", "VmRSS")
}

/// Memory in use on the machine (`MemTotal - MemAvailable` of `/proc/meminfo`): counts
/// what the sandboxes' own processes hold too, not only the server.
fn machine_used_kib() -> anyhow::Result<u64> {
    let total = kib_field("/proc/meminfo", "MemTotal")?;
    let available = kib_field("/proc/meminfo", "MemAvailable")?;
    Ok(total.saturating_sub(available))
}

/// The value of a `Name:   1234 kB` line of a proc file.
fn kib_field(path: &str, name: &str) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {path}"))?;
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {name} in {path}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt as _;

    #[tokio::test]
    async fn cycle_reader_yields_exactly_total_bytes() {
        let mut reader = cycle_reader(vec![1, 2, 3], 7);
        let mut read = Vec::new();
        reader.read_to_end(&mut read).await.unwrap();
        assert_eq!(read, vec![1, 2, 3, 1, 2, 3, 1]);
    }

    #[test]
    fn resident_memory_is_readable() {
        assert!(resident_kib().unwrap() > 0);
        let used = machine_used_kib().unwrap();
        assert!(used > 0 && used < kib_field("/proc/meminfo", "MemTotal").unwrap());
    }
}
