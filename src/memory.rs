//! The memory a run in tract may use: what the machine has available (Linux `MemAvailable`),
//! or what `ONNX_PTQ_MEMORY_BUDGET` says. A run whose estimated peak exceeds it is refused
//! before tract allocates anything, instead of swapping the machine to a halt or aborting.

use std::fmt;

/// The environment variable that overrides the budget: bytes, or a number with a K, M, G or T
/// suffix (powers of 1024).
pub const BUDGET_VAR: &str = "ONNX_PTQ_MEMORY_BUDGET";

/// Share of `MemAvailable` a run may take: the estimate leaves out tract's scratch buffers
/// and the process's other allocations.
const AVAILABLE_SHARE: f64 = 0.9;

/// How many bytes a run may use, and where that figure comes from.
#[derive(Debug, Clone, PartialEq)]
pub struct Budget {
    /// The limit in bytes.
    pub bytes: u64,
    /// Where the limit comes from, for messages.
    pub source: String,
}

impl Budget {
    /// The budget from `ONNX_PTQ_MEMORY_BUDGET`, else 90 % of `MemAvailable`; `None` when
    /// neither is known (not Linux): runs are then unlimited.
    pub fn from_environment() -> Result<Option<Budget>, String> {
        if let Some(value) = std::env::var_os(BUDGET_VAR) {
            let text = value.to_string_lossy();
            let bytes = parse_bytes(&text).ok_or_else(|| {
                format!("{BUDGET_VAR}={text} is not a size (bytes, or a number with K, M, G or T)")
            })?;
            return Ok(Some(Budget {
                bytes,
                source: format!("{BUDGET_VAR}={text}"),
            }));
        }
        let Ok(meminfo) = std::fs::read_to_string("/proc/meminfo") else {
            return Ok(None);
        };
        Ok(mem_available(&meminfo).map(|available| Budget {
            bytes: (available as f64 * AVAILABLE_SHARE) as u64,
            source: format!(
                "90 % of the {} available on this machine; set {BUDGET_VAR} to change it",
                Bytes(available)
            ),
        }))
    }
}

/// Refuses to allocate `count` elements of `element_size` bytes for `what` when they overflow or
/// exceed the budget; the message names `what` and both sizes.
pub fn check_allocation(count: u64, element_size: u64, what: &str) -> Result<(), String> {
    let bytes = count.checked_mul(element_size);
    let budget = Budget::from_environment()?;
    match (bytes, budget) {
        (Some(bytes), Some(budget)) if bytes > budget.bytes => Err(format!(
            "{what} needs {} of memory, more than the budget of {} ({})",
            Bytes(bytes),
            Bytes(budget.bytes),
            budget.source
        )),
        (None, _) => Err(format!(
            "{what} needs {count} elements of {element_size} bytes, which overflows"
        )),
        _ => Ok(()),
    }
}

/// The machine's memory (Linux `MemTotal`), when known.
pub fn mem_total() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// `MemAvailable` of a `/proc/meminfo` text, in bytes.
fn mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// `123`, `64K`, `512M`, `2G`, `1.5T` (binary multiples) as bytes.
pub fn parse_bytes(text: &str) -> Option<u64> {
    let text = text.trim();
    let (number, unit) = match text.char_indices().last()? {
        (i, c) if c.is_ascii_alphabetic() => (&text[..i], c.to_ascii_uppercase()),
        _ => (text, 'B'),
    };
    let scale: u64 = match unit {
        'B' => 1,
        'K' => 1 << 10,
        'M' => 1 << 20,
        'G' => 1 << 30,
        'T' => 1 << 40,
        _ => return None,
    };
    let value: f64 = number.trim().parse().ok()?;
    (value.is_finite() && value >= 0.0).then_some((value * scale as f64) as u64)
}

/// A byte count printed with a binary unit.
pub struct Bytes(pub u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
        let mut value = self.0 as f64;
        let mut unit = 0;
        while value >= 1024.0 && unit + 1 < UNITS.len() {
            value /= 1024.0;
            unit += 1;
        }
        if unit == 0 {
            write!(f, "{} B", self.0)
        } else {
            write!(f, "{value:.1} {}", UNITS[unit])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_bytes("1000"), Some(1000));
        assert_eq!(parse_bytes("64K"), Some(64 << 10));
        assert_eq!(parse_bytes("512m"), Some(512 << 20));
        assert_eq!(parse_bytes("1.5G"), Some(3 << 29));
        assert_eq!(parse_bytes("lots"), None);
        assert_eq!(parse_bytes("-1G"), None);
    }

    #[test]
    fn mem_available_is_read_in_bytes() {
        let text = "MemTotal:       24000000 kB\nMemAvailable:    2000 kB\n";
        assert_eq!(mem_available(text), Some(2000 * 1024));
        assert_eq!(mem_available("MemTotal: 1 kB\n"), None);
    }

    #[test]
    fn bytes_print_with_a_unit() {
        assert_eq!(Bytes(512).to_string(), "512 B");
        assert_eq!(Bytes(3 << 29).to_string(), "1.5 GiB");
    }
}
