//! Times on the command line and in exports: RFC 3339 in UTC, unix milliseconds, or relative to now ("15m").
//! Small and dependency-free (it depends on nothing in the crate); also the one clock of stored times.

use std::time::{SystemTime, UNIX_EPOCH};

/// Parses `2026-11-25T10:00:00Z` (fractions and `+hh:mm` offsets allowed), a date `2026-11-25` (midnight UTC),
/// unix milliseconds (13+ digits) or seconds, or a duration before `now_ms`: `90s`, `15m`, `2h`, `7d`.
pub fn parse(text: &str, now_ms: i64) -> Result<i64, String> {
    let t = text.trim();
    let error = || {
        format!(
            "cannot read {text:?} as a time: use 2026-11-25T10:00:00Z, 2026-11-25, unix milliseconds or 15m/2h/7d ago"
        )
    };
    if let Some((number, unit)) = t.char_indices().last().and_then(|(i, c)| Some((t.get(..i)?, c)))
        && let Ok(n) = number.parse::<i64>()
        && let Some(ms) = match unit {
            's' => Some(1000),
            'm' => Some(60_000),
            'h' => Some(3_600_000),
            'd' => Some(86_400_000),
            _ => None,
        }
    {
        return Ok(now_ms - n * ms);
    }
    if t.bytes().all(|b| b.is_ascii_digit()) {
        let n: i64 = t.parse().map_err(|_| error())?;
        return Ok(if t.len() >= 13 { n } else { n * 1000 });
    }
    parse_rfc3339(t).ok_or_else(error)
}

fn parse_rfc3339(t: &str) -> Option<i64> {
    let number = |s: &str| -> Option<i64> { s.bytes().all(|b| b.is_ascii_digit()).then(|| s.parse().ok())? };
    let (date, time) = match t.split_once(['T', ' ']) {
        Some((d, rest)) => (d, Some(rest)),
        None => (t, None),
    };
    let mut parts = date.splitn(3, '-');
    let (y, m, d) = (number(parts.next()?)?, number(parts.next()?)?, number(parts.next()?)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    let mut ms = days_from_civil(y, m, d) * 86_400_000;
    if let Some(time) = time {
        let (clock, offset_ms) = if let Some(c) = time.strip_suffix(['Z', 'z']) {
            (c, 0)
        } else if let Some(i) = time.rfind(['+', '-']) {
            let (c, off) = time.split_at(i);
            let sign = if off.starts_with('-') { -1 } else { 1 };
            let (h, mi) = off.get(1..)?.split_once(':')?;
            (c, sign * (number(h)? * 3_600_000 + number(mi)? * 60_000))
        } else {
            (time, 0)
        };
        let (hms, fraction) = match clock.split_once('.') {
            Some((hms, f)) => (hms, f),
            None => (clock, ""),
        };
        let mut fields = hms.splitn(3, ':');
        let (h, mi, s) =
            (number(fields.next()?)?, number(fields.next()?)?, number(fields.next().unwrap_or("0"))?);
        if h > 23 || mi > 59 || s > 60 {
            return None;
        }
        let millis = if fraction.is_empty() {
            0
        } else {
            number(&format!("{fraction:0<3}").chars().take(3).collect::<String>())?
        };
        ms += h * 3_600_000 + mi * 60_000 + s * 1000 + millis - offset_ms;
    }
    Some(ms)
}

/// `2026-11-25T10:00:00.123Z`.
pub fn format(ms: i64) -> String {
    let days = ms.div_euclid(86_400_000);
    let rest = ms.rem_euclid(86_400_000);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3_600_000,
        rest / 60_000 % 60,
        rest / 1000 % 60,
        rest % 1000
    )
}

/// Now, in unix milliseconds: how every stored time is kept.
pub fn now_ms() -> i64 {
    unix_millis(SystemTime::now())
}

/// A time in unix milliseconds (0 before 1970, saturating far in the future).
pub fn unix_millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)).unwrap_or(0)
}

/// Days since 1970-01-01 for a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_known_instants() {
        assert_eq!(parse("1970-01-01T00:00:00Z", 0), Ok(0));
        assert_eq!(parse("2026-11-25T10:00:00Z", 0), Ok(1_795_600_800_000));
        assert_eq!(parse("2026-11-25", 0), Ok(1_795_564_800_000));
        assert_eq!(parse("2026-11-25T12:00:00+02:00", 0), Ok(1_795_600_800_000));
        assert_eq!(parse("2000-02-29T23:59:59.5Z", 0).map(format), Ok("2000-02-29T23:59:59.500Z".into()));
        assert_eq!(format(1_795_600_800_123), "2026-11-25T10:00:00.123Z");
        for ms in [0, 951_782_400_000, 4_102_444_800_000, -86_400_000] {
            assert_eq!(parse(&format(ms), 0), Ok(ms));
        }
    }

    #[test]
    fn numbers_and_relative_times() {
        assert_eq!(parse("1795600800000", 0), Ok(1_795_600_800_000));
        assert_eq!(parse("1795600800", 0), Ok(1_795_600_800_000));
        assert_eq!(parse("15m", 1_000_000), Ok(100_000));
        assert_eq!(parse("2h", 10_000_000), Ok(2_800_000));
        assert!(parse("yesterday", 0).is_err());
        assert!(parse("2026-13-01", 0).is_err());
        assert!(parse("2026-11-25T25:00:00Z", 0).is_err());
    }
}
