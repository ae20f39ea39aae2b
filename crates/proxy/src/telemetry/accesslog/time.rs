//! `%START_TIME%` formatting: Envoy's default and the strftime subset Envoy accepts, on a UTC
//! calendar computed without a time-zone database.

use std::fmt::{self, Write as _};
use std::time::{SystemTime, UNIX_EPOCH};

/// A compiled `%START_TIME(…)%` format: Envoy's default (`2020-11-25T21:26:18.409Z`) or a strftime
/// subset with Envoy's fractional-second extensions (`%f`, `%3f`, `%E3S`, `%E*S`).
#[derive(Debug, Clone)]
pub(super) enum TimeFormat {
    Default,
    Custom(Vec<TimePart>),
}

#[derive(Debug, Clone)]
pub(super) enum TimePart {
    Lit(Box<str>),
    Year,
    Year2,
    Month,
    Day,
    DaySpace,
    Hour,
    Hour12,
    Minute,
    Second,
    /// Fraction of a second with N digits.
    Frac(u8),
    /// Seconds with N fractional digits (`%E3S`); 0 = Abseil's `%E*S` (trailing zeros trimmed).
    SecFrac(u8),
    Epoch,
    YearDay,
    WeekdayShort,
    WeekdayLong,
    MonthShort,
    MonthLong,
    AmPm,
    TzOffset,
    TzName,
}

const WEEKDAYS: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];
const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

impl TimeFormat {
    pub(super) fn parse(f: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut chars = f.chars().peekable();
        let flush = |lit: &mut String, parts: &mut Vec<TimePart>| {
            if !lit.is_empty() {
                parts.push(TimePart::Lit(std::mem::take(lit).into_boxed_str()));
            }
        };
        while let Some(c) = chars.next() {
            if c != '%' {
                lit.push(c);
                continue;
            }
            let Some(spec) = chars.next() else {
                return Err("START_TIME format ends with a lone '%'".into());
            };
            let part = match spec {
                '%' => {
                    lit.push('%');
                    continue;
                }
                'n' => {
                    lit.push('\n');
                    continue;
                }
                't' => {
                    lit.push('\t');
                    continue;
                }
                'Y' => TimePart::Year,
                'y' => TimePart::Year2,
                'm' => TimePart::Month,
                'd' => TimePart::Day,
                'e' => TimePart::DaySpace,
                'H' => TimePart::Hour,
                'I' => TimePart::Hour12,
                'M' => TimePart::Minute,
                'S' => TimePart::Second,
                's' => TimePart::Epoch,
                'j' => TimePart::YearDay,
                'a' => TimePart::WeekdayShort,
                'A' => TimePart::WeekdayLong,
                'b' | 'h' => TimePart::MonthShort,
                'B' => TimePart::MonthLong,
                'p' => TimePart::AmPm,
                'z' => TimePart::TzOffset,
                'Z' => TimePart::TzName,
                'f' => TimePart::Frac(9),
                'F' | 'T' | 'D' | 'R' => {
                    flush(&mut lit, &mut parts);
                    let expanded: &[TimePart] = match spec {
                        'F' => &[
                            TimePart::Year,
                            TimePart::Lit(Box::from("-")),
                            TimePart::Month,
                            TimePart::Lit(Box::from("-")),
                            TimePart::Day,
                        ],
                        'T' => &[
                            TimePart::Hour,
                            TimePart::Lit(Box::from(":")),
                            TimePart::Minute,
                            TimePart::Lit(Box::from(":")),
                            TimePart::Second,
                        ],
                        'D' => &[
                            TimePart::Month,
                            TimePart::Lit(Box::from("/")),
                            TimePart::Day,
                            TimePart::Lit(Box::from("/")),
                            TimePart::Year2,
                        ],
                        _ => &[
                            TimePart::Hour,
                            TimePart::Lit(Box::from(":")),
                            TimePart::Minute,
                        ],
                    };
                    parts.extend_from_slice(expanded);
                    continue;
                }
                d @ '1'..='9' => {
                    if chars.next() != Some('f') {
                        return Err(format!("START_TIME: %{d} must be followed by 'f' (%{d}f)"));
                    }
                    TimePart::Frac(d as u8 - b'0')
                }
                'E' => match (chars.next(), chars.next()) {
                    (Some('*'), Some('S')) => TimePart::SecFrac(0),
                    (Some(d @ '1'..='9'), Some('S')) => TimePart::SecFrac(d as u8 - b'0'),
                    _ => return Err("START_TIME: %E must be written %E<1-9>S or %E*S".into()),
                },
                other => {
                    return Err(format!(
                        "START_TIME: unsupported conversion %{other}; supported: %Y %y %m %d %e %H %I %M %S %s %j %a %A %b %B %p %z %Z %F %T %D %R %f %1f-%9f %E1S-%E9S %E*S %% %n %t"
                    ))
                }
            };
            flush(&mut lit, &mut parts);
            parts.push(part);
        }
        flush(&mut lit, &mut parts);
        Ok(TimeFormat::Custom(parts))
    }

    pub(super) fn write(&self, t: SystemTime, out: &mut String) {
        let tm = BrokenDown::from(t);
        match self {
            TimeFormat::Default => {
                let _ = write!(
                    out,
                    "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
                    tm.year,
                    tm.month,
                    tm.day,
                    tm.hour,
                    tm.minute,
                    tm.second,
                    tm.nanos / 1_000_000
                );
            }
            TimeFormat::Custom(parts) => {
                for p in parts {
                    tm.write_part(p, out);
                }
            }
        }
    }
}

/// A UTC calendar time.
struct BrokenDown {
    epoch: i64,
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    nanos: u32,
    /// 0 = Sunday.
    weekday: u32,
    /// 1-based day of the year.
    yearday: u32,
}

impl From<SystemTime> for BrokenDown {
    fn from(t: SystemTime) -> Self {
        let (epoch, nanos) = match t.duration_since(UNIX_EPOCH) {
            Ok(d) => (
                i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                d.subsec_nanos(),
            ),
            Err(e) => {
                // Before 1970: borrow a second so the fraction stays non-negative.
                let d = e.duration();
                let secs = -i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
                match d.subsec_nanos() {
                    0 => (secs, 0),
                    n => (secs - 1, 1_000_000_000 - n),
                }
            }
        };
        let days = epoch.div_euclid(86_400);
        let secs_of_day = epoch.rem_euclid(86_400) as u32;
        let (year, month, day) = civil_from_days(days);
        let jan1 = days_from_civil(year, 1, 1);
        BrokenDown {
            epoch,
            year,
            month,
            day,
            hour: secs_of_day / 3600,
            minute: secs_of_day / 60 % 60,
            second: secs_of_day % 60,
            nanos,
            weekday: (days + 4).rem_euclid(7) as u32, // 1970-01-01 was a Thursday
            yearday: (days - jan1 + 1) as u32,
        }
    }
}

impl BrokenDown {
    fn write_part(&self, p: &TimePart, out: &mut String) {
        let _ = match p {
            TimePart::Lit(s) => {
                out.push_str(s);
                Ok(())
            }
            TimePart::Year => write!(out, "{:04}", self.year),
            TimePart::Year2 => write!(out, "{:02}", self.year.rem_euclid(100)),
            TimePart::Month => write!(out, "{:02}", self.month),
            TimePart::Day => write!(out, "{:02}", self.day),
            TimePart::DaySpace => write!(out, "{:2}", self.day),
            TimePart::Hour => write!(out, "{:02}", self.hour),
            TimePart::Hour12 => write!(out, "{:02}", (self.hour + 11) % 12 + 1),
            TimePart::Minute => write!(out, "{:02}", self.minute),
            TimePart::Second => write!(out, "{:02}", self.second),
            TimePart::Frac(n) => write_frac(out, self.nanos, *n),
            TimePart::SecFrac(0) => {
                let _ = write!(out, "{:02}", self.second);
                if self.nanos != 0 {
                    let s = format!("{:09}", self.nanos);
                    let _ = write!(out, ".{}", s.trim_end_matches('0'));
                }
                Ok(())
            }
            TimePart::SecFrac(n) => {
                let _ = write!(out, "{:02}.", self.second);
                write_frac(out, self.nanos, *n)
            }
            TimePart::Epoch => write!(out, "{}", self.epoch),
            TimePart::YearDay => write!(out, "{:03}", self.yearday),
            TimePart::WeekdayShort => out.write_str(&WEEKDAYS[self.weekday as usize % 7][..3]),
            TimePart::WeekdayLong => out.write_str(WEEKDAYS[self.weekday as usize % 7]),
            TimePart::MonthShort => out.write_str(&MONTHS[(self.month as usize + 11) % 12][..3]),
            TimePart::MonthLong => out.write_str(MONTHS[(self.month as usize + 11) % 12]),
            TimePart::AmPm => out.write_str(if self.hour < 12 { "AM" } else { "PM" }),
            TimePart::TzOffset => out.write_str("+0000"),
            TimePart::TzName => out.write_str("UTC"),
        };
    }
}

fn write_frac(out: &mut String, nanos: u32, digits: u8) -> fmt::Result {
    let digits = u32::from(digits.clamp(1, 9));
    let v = nanos / 10u32.pow(9 - digits);
    write!(out, "{:0width$}", v, width = digits as usize)
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], March-based
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// (year, month, day) → days since 1970-01-01 (H. Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Formats a time as Envoy's default `%START_TIME%` (`2020-11-25T21:26:18.409Z`).
pub fn format_start_time(t: SystemTime) -> String {
    let mut s = String::with_capacity(24);
    TimeFormat::Default.write(t, &mut s);
    s
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn civil_round_trip() {
        for days in [-719_468_i64, -1, 0, 1, 10_957, 18_591, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(18_591), (2020, 11, 25));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn start_time_default_and_custom() {
        let t = UNIX_EPOCH + Duration::from_millis(1_606_339_578_409);
        assert_eq!(format_start_time(t), "2020-11-25T21:26:18.409Z");
        let f = TimeFormat::parse("%Y-%m-%dT%H:%M:%SZ %j %a %b %E3S %6f %s %e").unwrap();
        let mut s = String::new();
        f.write(t, &mut s);
        assert_eq!(
            s,
            "2020-11-25T21:26:18Z 330 Wed Nov 18.409 409000 1606339578 25"
        );
        let before = UNIX_EPOCH - Duration::from_millis(1);
        assert_eq!(format_start_time(before), "1969-12-31T23:59:59.999Z");
    }
}
