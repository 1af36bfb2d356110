//! Go-style durations (`87600h`, `720h30m`, `90s`) as certificate lifetimes are
//! written in Kubernetes resources (cert-manager uses the same form).

use std::time::Duration;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0:?} is not a duration such as 2160h, 720h30m or 90s")]
pub struct DurationError(pub String);

/// Parses `(<digits>(h|m|s))+`.
pub fn parse(s: &str) -> Result<Duration, DurationError> {
    let err = || DurationError(s.to_owned());
    if s.is_empty() {
        return Err(err());
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return Err(err()),
        };
        let n: u64 = digits.parse().map_err(|_| err())?;
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(err)?;
        digits.clear();
    }
    if !digits.is_empty() {
        return Err(err());
    }
    Ok(Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse("2160h"), Ok(Duration::from_secs(2160 * 3600)));
        assert_eq!(parse("1h30m15s"), Ok(Duration::from_secs(5415)));
        assert_eq!(parse("90s"), Ok(Duration::from_secs(90)));
        for bad in ["", "h", "10", "10d", "1.5h", "-1h", "99999999999999999999h"] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
