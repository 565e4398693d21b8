//! Lockdown flag state: which flags are on, in which mode, who turned them on,
//! why and until when; its state file (written atomically) and audit log. The
//! state is changed only by the one writer in `state` (`Shared::apply`).
//!
//! Start-up: the state file is read; a missing file means "the flags config marks
//! `default_active`". A corrupt or unreadable file is reported loudly (log,
//! metric, audit line), renamed to `<file>.corrupt-<unix time>` and the proxy
//! starts with the config defaults.

use rampart_config::{Config, LockdownConfig};
use rampart_policy::FlagMode;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch, now.
pub fn now_unix() -> u64 {
    now_unix_ms() / 1000
}

/// Milliseconds since the Unix epoch, now.
pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Enforce or preview.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Rejects what the flag matches.
    Enforce,
    /// Counts what the flag would reject.
    Preview,
}

impl Mode {
    fn flag_mode(self) -> FlagMode {
        match self {
            Mode::Enforce => FlagMode::Enforce,
            Mode::Preview => FlagMode::Preview,
        }
    }

    /// `enforce` or `preview`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Preview => "preview",
        }
    }
}

/// One active flag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "StoredActivation")]
pub struct Activation {
    /// Enforce or preview.
    pub mode: Mode,
    /// Who turned it on.
    pub actor: String,
    /// Why.
    pub reason: String,
    /// When (Unix milliseconds).
    pub since_ms: u64,
    /// When it turns itself off (Unix milliseconds), if ever.
    pub expires_ms: Option<u64>,
}

impl Activation {
    /// When it was turned on, Unix seconds.
    pub fn since(&self) -> u64 {
        self.since_ms / 1000
    }

    /// When it turns itself off, Unix seconds (rounded up), if ever.
    pub fn expires(&self) -> Option<u64> {
        self.expires_ms.map(|e| e.div_ceil(1000))
    }

    /// Whether its expiry has passed at `now_ms`.
    pub fn is_due(&self, now_ms: u64) -> bool {
        self.expires_ms.is_some_and(|e| e <= now_ms)
    }
}

/// An activation as stored: milliseconds (state version 2, fleet records), or
/// whole seconds as version 1 wrote them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredActivation {
    mode: Mode,
    actor: String,
    reason: String,
    #[serde(default)]
    since_ms: Option<u64>,
    #[serde(default)]
    expires_ms: Option<u64>,
    #[serde(default)]
    since: Option<u64>,
    #[serde(default)]
    expires: Option<u64>,
}

impl From<StoredActivation> for Activation {
    fn from(s: StoredActivation) -> Self {
        Activation {
            mode: s.mode,
            actor: s.actor,
            reason: s.reason,
            since_ms: s
                .since_ms
                .or(s.since.map(|t| t.saturating_mul(1000)))
                .unwrap_or(0),
            expires_ms: s.expires_ms.or(s.expires.map(|t| t.saturating_mul(1000))),
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    version: u32,
    flags: BTreeMap<String, Activation>,
}

/// Version 2 stores milliseconds; version 1 (whole seconds) is still read.
const STATE_VERSION: u32 = 2;

/// The flag state of one moment, immutable; part of the snapshot and replaced
/// with it, so its modes always belong to the snapshot's config.
#[derive(Debug, Clone, Default)]
pub struct FlagState {
    /// Active flags by name.
    pub active: BTreeMap<String, Activation>,
    /// Mode of each flag of the config, in config order.
    pub modes: Vec<FlagMode>,
}

impl FlagState {
    /// Builds the state for `active` against `config`'s flags.
    pub fn new(active: BTreeMap<String, Activation>, lockdown: &LockdownConfig) -> Self {
        let modes = modes_for(&active, lockdown);
        Self { active, modes }
    }
}

/// Mode of each configured flag given the active set.
fn modes_for(active: &BTreeMap<String, Activation>, lockdown: &LockdownConfig) -> Vec<FlagMode> {
    lockdown
        .flags
        .iter()
        .map(|f| {
            active
                .get(&f.name)
                .map_or(FlagMode::Off, |a| a.mode.flag_mode())
        })
        .collect()
}

/// What the state file held at start-up.
#[derive(Debug)]
pub enum Loaded {
    /// No state file: config defaults.
    Missing,
    /// The file's flags.
    Restored,
    /// The file was corrupt and set aside under this name.
    Corrupt {
        /// Where the bad file now is.
        moved_to: PathBuf,
        /// What was wrong.
        error: String,
    },
}

/// Reads the state file, falling back to the config defaults.
pub fn load(config: &Config) -> (BTreeMap<String, Activation>, Loaded) {
    let lockdown = &config.lockdown;
    let defaults = || {
        let since_ms = now_unix_ms();
        lockdown
            .flags
            .iter()
            .filter(|f| f.default_active)
            .map(|f| {
                (
                    f.name.clone(),
                    Activation {
                        mode: Mode::Enforce,
                        actor: "config".into(),
                        reason: "default_active in config".into(),
                        since_ms,
                        expires_ms: None,
                    },
                )
            })
            .collect()
    };
    let path = &lockdown.state_file;
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (defaults(), Loaded::Missing),
        Err(e) => return (defaults(), set_aside(path, format!("cannot read: {e}"))),
    };
    match serde_json::from_slice::<StateFile>(&text) {
        Ok(file) if file.version == STATE_VERSION || file.version == 1 => {
            (file.flags, Loaded::Restored)
        }
        Ok(file) => (
            defaults(),
            set_aside(path, format!("unsupported state version {}", file.version)),
        ),
        Err(e) => (
            defaults(),
            set_aside(path, format!("not a valid state file: {e}")),
        ),
    }
}

fn set_aside(path: &Path, error: String) -> Loaded {
    let mut moved = path.as_os_str().to_owned();
    moved.push(format!(".corrupt-{}", now_unix()));
    let moved_to = PathBuf::from(moved);
    if let Err(e) = std::fs::rename(path, &moved_to) {
        log::error!("cannot set aside {}: {e}", path.display());
    }
    Loaded::Corrupt { moved_to, error }
}

/// Writes the active flags atomically: a temporary file, fsync, rename, fsync of
/// the folder.
pub fn persist(path: &Path, active: &BTreeMap<String, Activation>) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let file = StateFile {
        version: STATE_VERSION,
        flags: active.clone(),
    };
    let text = serde_json::to_vec_pretty(&file).map_err(std::io::Error::other)?;
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&text)?;
        f.write_all(b"\n")?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// One audit record.
#[derive(Debug, Serialize)]
pub struct AuditEntry<'a> {
    /// Unix seconds.
    pub time: u64,
    /// Who.
    pub actor: &'a str,
    /// `enable`, `disable`, `expire`, `expire_local`, `fleet_enable`,
    /// `fleet_disable`, `fleet_republish`, `fleet_revert`, `corrupt_state`.
    pub action: &'a str,
    /// Which flag (empty for whole-state events).
    pub flag: &'a str,
    /// `enforce` or `preview`, for enable.
    pub mode: Option<&'a str>,
    /// Why.
    pub reason: &'a str,
    /// Requested time to live, seconds.
    pub ttl_seconds: Option<u64>,
    /// Expiry, Unix seconds.
    pub expires: Option<u64>,
    /// The node that wrote the record.
    pub node: &'a str,
    /// For changes learned from the fleet: the node that made them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin_node: Option<&'a str>,
}

/// Appends `entry` to the audit log and logs it.
pub fn audit(path: &Path, entry: &AuditEntry<'_>) {
    let line = serde_json::to_string(entry).unwrap_or_default();
    log::warn!("lockdown audit: {line}");
    let write = || -> std::io::Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        f.write_all(line.as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_data()
    };
    if let Err(e) = write() {
        log::error!(
            "cannot append to the lockdown audit log {}: {e}",
            path.display()
        );
    }
}

/// Parses a TTL: a positive duration such as `"2h"`, at most `max`, or `"none"`
/// for no expiry. An absent TTL means no expiry; an empty one is refused (it is
/// more likely a mistake than a wish for forever).
pub fn parse_ttl(ttl: Option<&str>, max: Duration) -> Result<Option<Duration>, String> {
    let Some(text) = ttl.map(str::trim) else {
        return Ok(None);
    };
    if text.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    if text.is_empty() {
        return Err(
            "ttl is empty: give a duration such as \"2h\", or \"none\" for no expiry".into(),
        );
    }
    let d = rampart_config::parse_duration(text).map_err(|e| format!("ttl: {e}"))?;
    if d.is_zero() {
        return Err("ttl must be longer than zero".into());
    }
    if d > max {
        return Err(format!(
            "ttl {text} is longer than lockdown.max_ttl ({} s); use \"none\" for no expiry",
            max.as_secs()
        ));
    }
    Ok(Some(d))
}

/// `text` with control characters (and other invisible formatting characters)
/// written as escapes, for terminals and logs: reasons and actors come from
/// whoever called the admin API.
pub fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control()
            || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
        {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const WEEK: Duration = Duration::from_secs(7 * 24 * 3600);

    #[test]
    fn ttls_are_positive_bounded_or_explicitly_none() {
        assert_eq!(parse_ttl(None, WEEK), Ok(None));
        assert_eq!(parse_ttl(Some("none"), WEEK), Ok(None));
        assert_eq!(
            parse_ttl(Some("2h"), WEEK),
            Ok(Some(Duration::from_secs(7200)))
        );
        assert!(parse_ttl(Some(""), WEEK).is_err());
        assert!(parse_ttl(Some("  "), WEEK).is_err());
        assert!(parse_ttl(Some("0s"), WEEK).is_err());
        assert!(parse_ttl(Some("8d"), WEEK).is_err());
        assert!(parse_ttl(Some("999999999999h"), WEEK).is_err());
    }

    #[test]
    fn activations_keep_milliseconds_and_read_version_1() {
        let old: Activation = serde_json::from_str(
            r#"{"mode":"enforce","actor":"a","reason":"r","since":1700000000,"expires":1700000060}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(old.since_ms, 1_700_000_000_000);
        assert_eq!(old.expires_ms, Some(1_700_000_060_000));
        let new = Activation {
            since_ms: 1_700_000_000_123,
            expires_ms: Some(1_700_000_000_623),
            ..old
        };
        let text = serde_json::to_string(&new).unwrap_or_default();
        assert!(text.contains("\"since_ms\":1700000000123"), "{text}");
        let back: Activation = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, new);
        assert!(!new.is_due(1_700_000_000_622));
        assert!(new.is_due(1_700_000_000_623));
    }

    #[test]
    fn printable_escapes_control_characters() {
        assert_eq!(printable("ok reason"), "ok reason");
        assert_eq!(printable("a\u{1b}[31mred\n"), "a\\u{1b}[31mred\\u{a}");
        assert_eq!(printable("x\u{202e}y"), "x\\u{202e}y");
    }
}
