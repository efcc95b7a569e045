//! What commands print on stdout: aligned tables, JSON, human times and sizes.

use std::collections::BTreeMap;
use std::io::Write as _;

use anyhow::Context as _;
use serde::Serialize;

/// Prints `value` as pretty JSON on stdout.
pub fn print_json<T: Serialize + ?Sized>(value: &T) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut stdout, value).context("cannot write JSON to stdout")?;
    writeln!(stdout).context("cannot write to stdout")?;
    Ok(())
}

/// A text table with a header row; columns are padded to their widest cell.
#[derive(Debug)]
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Self {
        Table {
            rows: vec![headers.iter().map(|header| header.to_uppercase()).collect()],
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as text, one line per row, no trailing spaces.
    pub fn render(&self) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|column| {
                self.rows
                    .iter()
                    .filter_map(|row| row.get(column))
                    .map(|cell| cell.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut text = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (column, cell) in row.iter().enumerate() {
                if column + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    let padding = widths[column] - cell.chars().count();
                    line.push_str(cell);
                    line.push_str(&" ".repeat(padding + 2));
                }
            }
            text.push_str(line.trim_end());
            text.push('\n');
        }
        text
    }

    pub fn print(&self) -> anyhow::Result<()> {
        std::io::stdout()
            .lock()
            .write_all(self.render().as_bytes())
            .context("cannot write to stdout")
    }
}

/// A short span: `45s`, `12m`, `3h`, `5d`.
pub fn short_duration(milliseconds: u64) -> String {
    let seconds = milliseconds / 1000;
    match seconds {
        0..=59 => format!("{seconds}s"),
        60..=3599 => format!("{}m", seconds / 60),
        3600..=86_399 => format!("{}h", seconds / 3600),
        _ => format!("{}d", seconds / 86_400),
    }
}

/// How long ago `at_ms` was.
pub fn age(at_ms: u64, now_ms: u64) -> String {
    short_duration(now_ms.saturating_sub(at_ms))
}

/// When `at_ms` comes: `in 12m`, `expired`, or `-` for never.
pub fn expiry(at_ms: Option<u64>, now_ms: u64) -> String {
    match at_ms {
        None => "-".into(),
        Some(at) if at <= now_ms => "expired".into(),
        Some(at) => format!("in {}", short_duration(at - now_ms)),
    }
}

/// `k=v,k2=v2`, or `-` when empty.
pub fn labels(labels: &BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return "-".into();
    }
    labels
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// A byte count in binary units: `512B`, `1.5KiB`, `3.0MiB`.
pub fn bytes(count: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if count < 1024 {
        return format!("{count}B");
    }
    let mut value = count as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1}{}", UNITS[unit])
}

/// `-rwxr-xr-x` style permission bits, with the kind as first letter.
pub fn permissions(kind: char, mode: u32) -> String {
    let mut text = String::with_capacity(10);
    text.push(kind);
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 0o7;
        text.push(if bits & 4 != 0 { 'r' } else { '-' });
        text.push(if bits & 2 != 0 { 'w' } else { '-' });
        text.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let mut table = Table::new(&["id", "status"]);
        table.row(vec!["abc".into(), "running".into()]);
        table.row(vec!["a".into(), "".into()]);
        assert_eq!(table.render(), "ID   STATUS\nabc  running\na\n");
    }

    #[test]
    fn human_units() {
        assert_eq!(short_duration(59_000), "59s");
        assert_eq!(short_duration(3_600_000), "1h");
        assert_eq!(expiry(Some(10_000), 20_000), "expired");
        assert_eq!(expiry(Some(80_000), 20_000), "in 1m");
        assert_eq!(expiry(None, 0), "-");
        assert_eq!(bytes(512), "512B");
        assert_eq!(bytes(3 * 1024 * 1024), "3.0MiB");
        assert_eq!(permissions('-', 0o755), "-rwxr-xr-x");
    }
}
