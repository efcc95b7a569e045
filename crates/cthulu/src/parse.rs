//! Parsers of command line values: `key=value` pairs, durations, sizes, enums of the API.

use std::collections::BTreeMap;
use std::time::Duration;

use cthulu_types::{BackendKind, NetworkMode, SandboxStatus, Signal};

/// `key=value`; the value may be empty and may hold `=`.
pub fn key_value(raw: &str) -> Result<(String, String), String> {
    match raw.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {raw:?}")),
    }
}

/// Collects `key=value` pairs into a map; a later pair wins.
pub fn into_map(pairs: &[(String, String)]) -> BTreeMap<String, String> {
    pairs.iter().cloned().collect()
}

/// A duration such as `30s`, `10m`, `1h30m` or `0`.
pub fn duration(raw: &str) -> Result<Duration, String> {
    if raw.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(raw.trim())
        .map_err(|error| format!("{error} (expected a duration such as 30s, 10m or 1h)"))
}

/// A size in MiB: `256M`, `1G`, `1.5GiB`, or a bare number of MiB.
pub fn size_mib(raw: &str) -> Result<u64, String> {
    let trimmed = raw.trim();
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("expected a size such as 256M or 1G, got {raw:?}"))?;
    let mib_per_unit = match unit.trim().to_ascii_lowercase().as_str() {
        "k" | "kb" | "kib" => 1.0 / 1024.0,
        "" | "m" | "mb" | "mib" => 1.0,
        "g" | "gb" | "gib" => 1024.0,
        "t" | "tb" | "tib" => 1024.0 * 1024.0,
        other => return Err(format!("unknown size unit {other:?} (use K, M, G or T)")),
    };
    let mib = (number * mib_per_unit).ceil();
    if mib < 1.0 {
        return Err(format!("{raw:?} is less than 1 MiB"));
    }
    Ok(mib as u64)
}

pub fn backend(raw: &str) -> Result<BackendKind, String> {
    BackendKind::parse(raw).ok_or_else(|| {
        let known: Vec<&str> = BackendKind::ALL.iter().map(|kind| kind.as_str()).collect();
        format!("unknown backend {raw:?} (one of {})", known.join(", "))
    })
}

pub fn status(raw: &str) -> Result<SandboxStatus, String> {
    SandboxStatus::parse(raw).ok_or_else(|| {
        format!("unknown status {raw:?} (creating, running, stopped, failed, lost, destroyed)")
    })
}

pub fn network(raw: &str) -> Result<NetworkMode, String> {
    match raw {
        "none" => Ok(NetworkMode::None),
        "full" => Ok(NetworkMode::Full),
        _ => Err(format!("unknown network mode {raw:?} (none or full)")),
    }
}

pub fn signal(raw: &str) -> Result<Signal, String> {
    Signal::parse(raw).ok_or_else(|| {
        format!("unknown signal {raw:?} (HUP INT QUIT KILL USR1 USR2 TERM CONT STOP WINCH)")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_values() {
        assert_eq!(key_value("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert_eq!(key_value("a="), Ok(("a".into(), String::new())));
        assert!(key_value("=b").is_err());
        assert!(key_value("ab").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(duration("0"), Ok(Duration::ZERO));
        assert_eq!(duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert!(duration("soon").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(size_mib("256M"), Ok(256));
        assert_eq!(size_mib("256"), Ok(256));
        assert_eq!(size_mib("1G"), Ok(1024));
        assert_eq!(size_mib("1.5GiB"), Ok(1536));
        assert_eq!(size_mib("2048K"), Ok(2));
        assert!(size_mib("1X").is_err());
        assert_eq!(size_mib("12K"), Ok(1));
        assert!(size_mib("0").is_err());
    }
}
