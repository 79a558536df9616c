//! Range checks for numbers that come from outside (flags, files, the wire): one place, one
//! message shape, so a NaN learning rate or an infinite timeout is refused before anything
//! runs instead of training to NaN weights or panicking inside `Duration`.

use std::ops::RangeInclusive;

/// An interval a float setting must lie in; `open_low` excludes the lower end (a learning
/// rate of exactly 0 trains nothing; a dropout of exactly 1 drops everything).
#[derive(Debug, Clone, Copy)]
pub struct Interval {
    pub low: f64,
    pub high: f64,
    pub open_low: bool,
    pub open_high: bool,
}

impl Interval {
    /// (low, high]
    pub const fn above(low: f64, high: f64) -> Interval {
        Interval { low, high, open_low: true, open_high: false }
    }
    /// [low, high]
    pub const fn closed(low: f64, high: f64) -> Interval {
        Interval { low, high, open_low: false, open_high: false }
    }
    /// (low, high)
    pub const fn open(low: f64, high: f64) -> Interval {
        Interval { low, high, open_low: true, open_high: true }
    }
    /// [low, high)
    pub const fn below(low: f64, high: f64) -> Interval {
        Interval { low, high, open_low: false, open_high: true }
    }

    pub fn contains(&self, v: f64) -> bool {
        // NaN fails every comparison, so it is never inside.
        let lo = if self.open_low { v > self.low } else { v >= self.low };
        let hi = if self.open_high { v < self.high } else { v <= self.high };
        v.is_finite() && lo && hi
    }

    pub fn describe(&self) -> String {
        format!("{}{}, {}{}", if self.open_low { "(" } else { "[" }, show(self.low), show(self.high), if self.open_high { ")" } else { "]" })
    }
}

/// `name value: must be a finite number in [a, b]` unless `v` lies in `range`.
pub fn float(name: &str, v: f64, range: Interval) -> Result<(), String> {
    if range.contains(v) {
        Ok(())
    } else {
        Err(format!("{name} {}: must be a finite number in {}", show(v), range.describe()))
    }
}

/// A float as a person wrote it: `1e300`, not three hundred digits.
pub fn show(v: f64) -> String {
    if v.is_finite() && v != 0.0 && !(1e-4..1e6).contains(&v.abs()) {
        format!("{v:e}")
    } else {
        format!("{v}")
    }
}

/// `name value: must be in a..=b` unless `v` lies in `range`.
pub fn int<T: PartialOrd + std::fmt::Display>(name: &str, v: T, range: RangeInclusive<T>) -> Result<(), String> {
    if range.contains(&v) {
        Ok(())
    } else {
        Err(format!("{name} {v}: must be in {}..={}", range.start(), range.end()))
    }
}

/// Longest a wait may be, in seconds (about 11.6 days): far beyond any sensible timeout, and
/// far inside what `Duration::from_secs_f64` accepts.
pub const MAX_SECONDS: f64 = 1e6;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_refuse_non_finite_and_out_of_range_values() {
        let lr = Interval::above(0.0, 10.0);
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -1.0, 0.0, 10.5, 1e300] {
            assert!(!lr.contains(bad), "{bad}");
            let e = float("--lr", bad, lr).unwrap_err();
            assert!(e.starts_with("--lr ") && e.contains("finite number in (0, 10]"), "{e}");
        }
        for good in [1e-9, 5e-4, 10.0] {
            assert!(lr.contains(good), "{good}");
        }
        let p = Interval::below(0.0, 1.0);
        assert!(p.contains(0.0) && !p.contains(1.0) && !p.contains(1.5));
        assert!(int("--threads", 0usize, 1..=1024).unwrap_err().contains("--threads 0"));
    }
}
