//! Human units used in the config file: durations (`"500ms"`, `"5s"`, `"2m"`) and
//! rates (`"10/s"`, `"300/min"`).

use std::num::NonZeroU32;
use std::time::Duration;

/// A rate of events: `count` per `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// How many events are allowed in one period.
    pub count: NonZeroU32,
    /// The period; never zero.
    pub per: Duration,
}

impl Rate {
    /// The time between two events at a steady pace (`per / count`).
    pub fn interval(&self) -> Duration {
        self.per / self.count.get()
    }
}

/// Parses a duration such as `"250ms"`, `"5s"`, `"2m"`, `"1h"` or `"1d"`.
///
/// A bare number is refused: the unit is part of the value so that a config reads
/// the same to everyone.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("\"{text}\" has no unit (use ms, s, m, h or d, e.g. \"5s\")"))?;
    let (number, unit) = text.split_at(split);
    if number.is_empty() {
        return Err(format!(
            "\"{text}\" is not a duration (expected a whole number and a unit, e.g. \"5s\")"
        ));
    }
    let n: u64 = number
        .parse()
        .map_err(|_| format!("\"{text}\": the number is too large"))?;
    let millis_per_unit: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => {
            return Err(format!(
                "\"{text}\": unknown unit \"{unit}\" (use ms, s, m, h or d)"
            ))
        }
    };
    n.checked_mul(millis_per_unit)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("\"{text}\": the duration is too large"))
}

/// Parses a rate such as `"10/s"`, `"300/min"`, `"1000/h"` or `"20/10s"`.
pub fn parse_rate(text: &str) -> Result<Rate, String> {
    let text = text.trim();
    let (count, period) = text.split_once('/').ok_or_else(|| {
        format!("\"{text}\" is not a rate (expected COUNT/PERIOD, e.g. \"10/s\" or \"300/min\")")
    })?;
    let count: u32 = count
        .trim()
        .parse()
        .map_err(|_| format!("\"{text}\": \"{count}\" is not a whole number of requests"))?;
    let count = NonZeroU32::new(count).ok_or_else(|| {
        format!("\"{text}\": a rate of zero would block everything; use a deny rule instead")
    })?;
    let period = period.trim();
    let per = match period {
        "s" | "sec" | "second" => Duration::from_secs(1),
        "m" | "min" | "minute" => Duration::from_secs(60),
        "h" | "hour" => Duration::from_secs(3600),
        "d" | "day" => Duration::from_secs(86_400),
        other => parse_duration(other).map_err(|e| format!("\"{text}\": period {e}"))?,
    };
    if per.is_zero() {
        return Err(format!("\"{text}\": the period must be longer than zero"));
    }
    Ok(Rate { count, per })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
    }

    #[test]
    fn durations_without_unit_or_number_are_refused() {
        assert!(parse_duration("5").unwrap_err().contains("no unit"));
        assert!(parse_duration("s").unwrap_err().contains("not a duration"));
        assert!(parse_duration("5 parsecs")
            .unwrap_err()
            .contains("unknown unit"));
        assert!(parse_duration("99999999999999999999s").is_err());
    }

    #[test]
    fn rates_parse_with_named_and_numeric_periods() {
        let r = parse_rate("10/s").unwrap();
        assert_eq!((r.count.get(), r.per), (10, Duration::from_secs(1)));
        let r = parse_rate("300/min").unwrap();
        assert_eq!((r.count.get(), r.per), (300, Duration::from_secs(60)));
        assert_eq!(r.interval(), Duration::from_millis(200));
        let r = parse_rate("20/10s").unwrap();
        assert_eq!((r.count.get(), r.per), (20, Duration::from_secs(10)));
    }

    #[test]
    fn bad_rates_are_refused() {
        assert!(parse_rate("10").unwrap_err().contains("not a rate"));
        assert!(parse_rate("0/s").unwrap_err().contains("zero"));
        assert!(parse_rate("ten/s").unwrap_err().contains("whole number"));
        assert!(parse_rate("10/fortnight").unwrap_err().contains("unit"));
        assert!(parse_rate("10/0s")
            .unwrap_err()
            .contains("longer than zero"));
    }
}
