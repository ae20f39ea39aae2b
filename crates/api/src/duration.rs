//! Durations as Istio YAML writes them: protobuf form (`3s`, `0.5s`) and Go form (`100ms`, `1m30s`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A non-negative duration decoded from `"3s"`, `"0.5s"`, `"250ms"`, `"1m"`, `"1h30m"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(pub std::time::Duration);

/// The longest duration accepted: `google.protobuf.Duration`'s range (±10,000 years), which is
/// what Istio's decoder (protobuf JSON) refuses beyond. Anything longer cannot be represented
/// where the value ends up (Envoy's config, timers), and in practice it is a typo.
pub const MAX_SECONDS: u64 = 315_576_000_000;

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("invalid duration {input:?}: expected a number with a unit (s, ms, m, h), e.g. \"3s\" or \"0.5s\"")]
    Syntax { input: String },
    #[error("duration {input:?} is too long: the maximum is {MAX_SECONDS}s (10,000 years, the range of a protobuf Duration)")]
    TooLong { input: String },
}

impl FromStr for Duration {
    type Err = DurationError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = || DurationError::Syntax {
            input: input.to_string(),
        };
        let s = input.trim();
        if s.is_empty() {
            return Err(err());
        }
        // Sequence of <number><unit> pairs, as Go's time.ParseDuration accepts.
        let mut total = 0f64;
        let mut rest = s;
        while !rest.is_empty() {
            let num_len = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or_else(err)?;
            if num_len == 0 {
                return Err(err());
            }
            let value: f64 = rest[..num_len].parse().map_err(|_| err())?;
            rest = &rest[num_len..];
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(rest.len());
            let secs_per_unit = match &rest[..unit_len] {
                "ns" => 1e-9,
                "us" | "µs" => 1e-6,
                "ms" => 1e-3,
                "s" => 1.0,
                "m" => 60.0,
                "h" => 3600.0,
                _ => return Err(err()),
            };
            rest = &rest[unit_len..];
            total += value * secs_per_unit;
        }
        if total.is_nan() || total < 0.0 {
            return Err(err());
        }
        // Checked here rather than left to `from_secs_f64`, which panics on overflow: a config
        // value must never be able to abort the process that reads it.
        if total > MAX_SECONDS as f64 {
            return Err(DurationError::TooLong {
                input: input.to_string(),
            });
        }
        std::time::Duration::try_from_secs_f64(total)
            .map(Duration)
            .map_err(|_| err())
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Protobuf JSON form: seconds with up to nanosecond precision.
        let secs = self.0.as_secs_f64();
        if self.0.subsec_nanos() == 0 {
            write!(f, "{}s", self.0.as_secs())
        } else {
            write!(f, "{}s", format!("{secs:.9}").trim_end_matches('0'))
        }
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // A visitor rather than `String::deserialize` so a wrong type reads
        // "expected a duration such as "3s"" instead of "expected a string".
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Duration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"3s\"")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Duration, E> {
                s.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `from_secs_f64` panics past `u64::MAX` seconds; with `panic = "abort"` that killed the
    /// proxy on a live edit. Every form of "too long" is an error naming the limit.
    #[test]
    fn huge_durations_are_refused_not_panicked_on() {
        for input in [
            "99999999999999999999s",
            "315576000001s",
            "99999999999999999999h",
            "5256000000000m",
            "18446744073709551616s",
            "99999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999s",
        ] {
            let err = input.parse::<Duration>().unwrap_err();
            let message = err.to_string();
            assert!(
                message.contains("maximum is 315576000000s"),
                "{input}: {message}"
            );
        }
        assert!(matches!(
            "99999999999999999999s".parse::<Duration>(),
            Err(DurationError::TooLong { .. })
        ));
    }

    #[test]
    fn parses_protobuf_and_go_forms() {
        let ms = |s: &str| s.parse::<Duration>().unwrap().0.as_millis();
        assert_eq!(ms("3s"), 3000);
        assert_eq!(ms("0.5s"), 500);
        assert_eq!(ms("250ms"), 250);
        assert_eq!(ms("1m30s"), 90_000);
        assert_eq!(ms("1h"), 3_600_000);
        assert!("3".parse::<Duration>().is_err());
        assert!("s".parse::<Duration>().is_err());
        assert!("3 seconds".parse::<Duration>().is_err());
        assert_eq!(
            "315576000000s".parse::<Duration>().unwrap().0.as_secs(),
            MAX_SECONDS
        );
        assert_eq!(ms("0.001s"), 1);
        assert_eq!(
            Duration(std::time::Duration::from_millis(500)).to_string(),
            "0.5s"
        );
        assert_eq!(
            Duration(std::time::Duration::from_secs(3)).to_string(),
            "3s"
        );
    }
}
