//! Prometheus metrics, in the text exposition format.
//!
//! Written by hand: a handful of counters does not justify the `metrics` +
//! exporter stack and its dependencies on a 2-core build machine.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Metrics {
    pub http_requests: [AtomicU64; 5],
    pub sandboxes_created: AtomicU64,
    pub sandboxes_destroyed: AtomicU64,
    pub sandboxes_expired: AtomicU64,
    pub execs: AtomicU64,
    pub exec_milliseconds: AtomicU64,
    pub exec_streams: AtomicU64,
    pub bytes_uploaded: AtomicU64,
    pub bytes_downloaded: AtomicU64,
}

impl Metrics {
    pub fn count_response(&self, status: u16) {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        self.http_requests[class].fetch_add(1, Ordering::Relaxed);
    }

    /// The exposition text; `sandboxes` holds (backend, status, count).
    pub fn render(&self, sandboxes: &[(String, String, u64)]) -> String {
        let mut out = String::new();
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        out.push_str("# HELP cthulu_http_responses_total HTTP responses by status class.\n");
        out.push_str("# TYPE cthulu_http_responses_total counter\n");
        for (index, counter) in self.http_requests.iter().enumerate() {
            let _ = writeln!(
                out,
                "cthulu_http_responses_total{{class=\"{}xx\"}} {}",
                index + 1,
                get(counter)
            );
        }
        let counters = [
            (
                "cthulu_sandboxes_created_total",
                "Sandboxes created.",
                &self.sandboxes_created,
            ),
            (
                "cthulu_sandboxes_destroyed_total",
                "Sandboxes destroyed.",
                &self.sandboxes_destroyed,
            ),
            (
                "cthulu_sandboxes_expired_total",
                "Sandboxes destroyed at the end of their lifetime.",
                &self.sandboxes_expired,
            ),
            ("cthulu_execs_total", "One-shot execs run.", &self.execs),
            (
                "cthulu_exec_milliseconds_total",
                "Time spent in one-shot execs.",
                &self.exec_milliseconds,
            ),
            (
                "cthulu_exec_streams_total",
                "Streaming execs started.",
                &self.exec_streams,
            ),
            (
                "cthulu_uploaded_bytes_total",
                "Bytes written into sandboxes.",
                &self.bytes_uploaded,
            ),
            (
                "cthulu_downloaded_bytes_total",
                "Bytes read from sandboxes.",
                &self.bytes_downloaded,
            ),
        ];
        for (name, help, counter) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                get(counter)
            );
        }
        out.push_str("# HELP cthulu_sandboxes Live sandboxes by backend and status.\n");
        out.push_str("# TYPE cthulu_sandboxes gauge\n");
        for (backend, status, count) in sandboxes {
            let _ = writeln!(
                out,
                "cthulu_sandboxes{{backend=\"{backend}\",status=\"{status}\"}} {count}"
            );
        }
        out
    }
}
