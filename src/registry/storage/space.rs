//! The disk-pressure guard: with less free space than `--min-free-space`
//! (bytes or a percentage of the filesystem), new uploads are refused at once,
//! before any byte is written, while pulls, deletes and garbage collection go
//! on. A write that still meets a full disk (ENOSPC) is rolled back and
//! answered the same way.

use std::str::FromStr;
use std::sync::Arc;

use crate::registry::metrics::Metrics;

/// The least free space to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MinFree {
    Bytes(u64),
    /// Percent of the filesystem's size, 0..=100.
    Percent(u8),
}

impl Default for MinFree {
    fn default() -> Self {
        MinFree::Percent(5)
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("expected a byte count (1073741824, 512Mi, 10Gi, 1G) or a percentage (5%), got {0:?}")]
pub struct MinFreeError(String);

impl FromStr for MinFree {
    type Err = MinFreeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || MinFreeError(s.to_owned());
        let t = s.trim();
        if let Some(p) = t.strip_suffix('%') {
            let p: u8 = p.trim().parse().map_err(|_| bad())?;
            return if p <= 100 {
                Ok(MinFree::Percent(p))
            } else {
                Err(bad())
            };
        }
        let (digits, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
        let n: u64 = digits.parse().map_err(|_| bad())?;
        let factor: u64 = match unit.trim() {
            "" => 1,
            "K" | "k" => 1000,
            "M" => 1000_u64.pow(2),
            "G" => 1000_u64.pow(3),
            "T" => 1000_u64.pow(4),
            "Ki" => 1 << 10,
            "Mi" => 1 << 20,
            "Gi" => 1 << 30,
            "Ti" => 1 << 40,
            _ => return Err(bad()),
        };
        n.checked_mul(factor).map(MinFree::Bytes).ok_or_else(bad)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    pub free: u64,
    pub total: u64,
}

impl Space {
    pub fn below(&self, min: MinFree) -> bool {
        match min {
            MinFree::Bytes(b) => self.free < b,
            MinFree::Percent(p) => {
                (u128::from(self.free) * 100) < u128::from(self.total) * u128::from(p)
            }
        }
    }

    /// `min` in bytes of this filesystem (a percentage rounded down).
    pub fn min_free_bytes(&self, min: MinFree) -> u64 {
        match min {
            MinFree::Bytes(b) => b,
            MinFree::Percent(p) => {
                u64::try_from(u128::from(self.total) * u128::from(p) / 100).unwrap_or(u64::MAX)
            }
        }
    }
}

pub struct SpaceGuard {
    driver: Arc<dyn super::StorageDriver>,
    min_free: MinFree,
    metrics: Arc<Metrics>,
}

impl SpaceGuard {
    pub fn new(
        driver: Arc<dyn super::StorageDriver>,
        min_free: MinFree,
        metrics: Arc<Metrics>,
    ) -> SpaceGuard {
        SpaceGuard {
            driver,
            min_free,
            metrics,
        }
    }

    /// Measures now (a statvfs: microseconds), updating the metrics.
    pub fn measure(&self) -> Option<Space> {
        let space = self.driver.space()?;
        self.metrics
            .storage_free_bytes
            .set(i64::try_from(space.free).unwrap_or(i64::MAX));
        self.metrics
            .storage_size_bytes
            .set(i64::try_from(space.total).unwrap_or(i64::MAX));
        self.metrics
            .storage_min_free_bytes
            .set(i64::try_from(space.min_free_bytes(self.min_free)).unwrap_or(i64::MAX));
        // What the operator reads for the StoragePressure condition.
        self.metrics
            .storage_pressure
            .set(i64::from(space.below(self.min_free)));
        Some(space)
    }

    /// Whether a new upload may start, measured now: a statvfs costs
    /// microseconds, and a cached answer lets a burst of pushes past the
    /// threshold. A filesystem that cannot be measured does not block uploads
    /// (the writes themselves will tell).
    pub fn admits_upload(&self) -> bool {
        let full = self.measure().is_some_and(|s| s.below(self.min_free));
        if full {
            self.metrics.uploads_refused_storage_full.inc();
        }
        !full
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_free_forms() {
        assert_eq!("5%".parse(), Ok(MinFree::Percent(5)));
        assert_eq!("1024".parse(), Ok(MinFree::Bytes(1024)));
        assert_eq!("10Gi".parse(), Ok(MinFree::Bytes(10 << 30)));
        assert_eq!("2G".parse(), Ok(MinFree::Bytes(2_000_000_000)));
        for bad in [
            "101%",
            "-1",
            "5 %x",
            "1Pi",
            "",
            "99999999999999999999Ti",
            "1e9",
        ] {
            assert!(bad.parse::<MinFree>().is_err(), "{bad}");
        }
    }

    #[test]
    fn pressure() {
        let s = Space {
            free: 4,
            total: 100,
        };
        assert!(s.below(MinFree::Percent(5)));
        assert!(!s.below(MinFree::Percent(4)));
        assert!(s.below(MinFree::Bytes(5)));
        assert!(!s.below(MinFree::Bytes(4)));
        assert_eq!(s.min_free_bytes(MinFree::Percent(5)), 5);
        assert_eq!(s.min_free_bytes(MinFree::Bytes(7)), 7);
        let huge = Space {
            free: u64::MAX / 2 + 1,
            total: u64::MAX,
        };
        assert!(!huge.below(MinFree::Percent(50)));
    }
}
