//! The validity window of a stack commit: when it was signed and until when a host
//! accepts it as the head of its stack.
//!
//! A mirror that stops serving new commits (TUF's freeze attack) keeps hosts on old
//! patches without forging anything. The window makes that visible: every signature
//! covers `stack.toml`, which holds the window, so a frozen head runs out of time and
//! `sync` refuses it (or warns, if the host's config says so). Publishers renew the
//! head before it expires (`kstack renew`: the same patches, a new window).

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// How long a commit stays valid when neither the command line nor the config says.
pub const DEFAULT_VALIDITY: Duration = Duration::from_secs(30 * 24 * 3600);

/// A point in time, to the second, written as RFC 3339 in UTC
/// (`2026-11-27T17:00:00Z`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

/// A time that is not RFC 3339 UTC, or a window that ends before it starts.
#[derive(Debug, thiserror::Error)]
pub enum ValidityError {
    #[error("bad time {text:?}: expected RFC 3339 in UTC, like 2026-11-27T17:00:00Z")]
    BadTime { text: String },
    #[error("the window ends ({expires}) before it starts ({signed_at})")]
    Inverted {
        signed_at: Timestamp,
        expires: Timestamp,
    },
}

impl Timestamp {
    /// Seconds since the epoch.
    pub fn from_secs(secs: i64) -> Timestamp {
        Timestamp(secs)
    }

    pub fn secs(self) -> i64 {
        self.0
    }

    /// The system clock, now.
    pub fn now() -> Timestamp {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        Timestamp(secs)
    }

    /// This time plus `duration` (saturating).
    pub fn plus(self, duration: Duration) -> Timestamp {
        let secs = i64::try_from(duration.as_secs()).unwrap_or(i64::MAX);
        Timestamp(self.0.saturating_add(secs))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // humantime formats from 1970 to 9999; clamp rather than panic on the rest.
        const LAST: i64 = 253_402_300_799; // 9999-12-31T23:59:59Z
        let secs = self.0.clamp(0, LAST) as u64;
        let time = UNIX_EPOCH + Duration::from_secs(secs);
        write!(f, "{}", humantime::format_rfc3339_seconds(time))
    }
}

impl FromStr for Timestamp {
    type Err = ValidityError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || ValidityError::BadTime {
            text: text.to_owned(),
        };
        // Only the form kstack writes: `YYYY-MM-DDTHH:MM:SSZ`.
        if text.len() != 20 || !text.ends_with('Z') {
            return Err(bad());
        }
        let time = humantime::parse_rfc3339(text).map_err(|_| bad())?;
        let secs = time
            .duration_since(UNIX_EPOCH)
            .map_err(|_| bad())?
            .as_secs();
        Ok(Timestamp(i64::try_from(secs).map_err(|_| bad())?))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// `[validity]` of `stack.toml`: signed by every signature of the commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Validity {
    /// When the commit was made and signed.
    pub signed_at: Timestamp,
    /// From this time on, hosts no longer accept the commit as a stack's head.
    pub expires: Timestamp,
}

/// Where a time falls in a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Valid for this much longer.
    Valid { left: Duration },
    /// Expired this long ago.
    Expired { ago: Duration },
}

impl Validity {
    /// The window from `signed_at` for `valid_for`.
    pub fn starting(signed_at: Timestamp, valid_for: Duration) -> Validity {
        Validity {
            signed_at,
            expires: signed_at.plus(valid_for),
        }
    }

    /// Checks that the window does not end before it starts.
    pub fn check(&self) -> Result<(), ValidityError> {
        if self.expires < self.signed_at {
            return Err(ValidityError::Inverted {
                signed_at: self.signed_at,
                expires: self.expires,
            });
        }
        Ok(())
    }

    /// Whether the window is still open at `now`.
    pub fn freshness(&self, now: Timestamp) -> Freshness {
        let diff = self.expires.0.saturating_sub(now.0);
        if diff > 0 {
            Freshness::Valid {
                left: Duration::from_secs(diff.unsigned_abs()),
            }
        } else {
            Freshness::Expired {
                ago: Duration::from_secs(diff.unsigned_abs()),
            }
        }
    }
}

impl fmt::Display for Validity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "signed {}, expires {}", self.signed_at, self.expires)
    }
}

/// A duration for people, to the largest whole unit: `3 days`, `5 hours`, `40 s`.
pub fn rough(duration: Duration) -> String {
    let secs = duration.as_secs();
    let (n, unit) = match secs {
        s if s >= 2 * 86_400 => (s / 86_400, "days"),
        s if s >= 2 * 3600 => (s / 3600, "hours"),
        s if s >= 2 * 60 => (s / 60, "minutes"),
        s => (s, "s"),
    };
    format!("{n} {unit}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_and_refuse_other_forms() {
        let t: Timestamp = "2026-11-27T17:00:00Z".parse().unwrap();
        assert_eq!(t.to_string(), "2026-11-27T17:00:00Z");
        assert_eq!(
            Timestamp::from_secs(1_700_000_000).to_string(),
            "2023-11-14T22:13:20Z"
        );
        for bad in [
            "2026-11-27 17:00:00",
            "2026-11-27T17:00:00+01:00",
            "2026-11-27T17:00:00.5Z",
            "1969-12-31T23:59:59Z",
            "",
        ] {
            assert!(bad.parse::<Timestamp>().is_err(), "{bad}");
        }
        // Out of humantime's range: printed clamped, never a panic.
        assert_eq!(
            Timestamp::from_secs(i64::MAX).to_string(),
            "9999-12-31T23:59:59Z"
        );
    }

    #[test]
    fn freshness() {
        let w = Validity::starting(Timestamp::from_secs(1000), Duration::from_secs(100));
        assert_eq!(w.expires, Timestamp::from_secs(1100));
        assert_eq!(
            w.freshness(Timestamp::from_secs(1090)),
            Freshness::Valid {
                left: Duration::from_secs(10)
            }
        );
        assert_eq!(
            w.freshness(Timestamp::from_secs(1100)),
            Freshness::Expired {
                ago: Duration::ZERO
            }
        );
        let inverted = Validity {
            signed_at: Timestamp::from_secs(5),
            expires: Timestamp::from_secs(4),
        };
        assert!(inverted.check().is_err());
        assert_eq!(rough(Duration::from_secs(3 * 86_400 + 5)), "3 days");
        assert_eq!(rough(Duration::from_secs(90)), "90 s");
    }
}
