//! Lockdown flag state: which flags are on, in which mode, who turned them on,
//! why and until when. Written from one place (this module, called by the admin
//! API and the expiry service), persisted atomically to the state file, and every
//! change appended to the audit log.
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
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
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
#[serde(deny_unknown_fields)]
pub struct Activation {
    /// Enforce or preview.
    pub mode: Mode,
    /// Who turned it on.
    pub actor: String,
    /// Why.
    pub reason: String,
    /// When (Unix seconds).
    pub since: u64,
    /// When it turns itself off (Unix seconds), if ever.
    pub expires: Option<u64>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    version: u32,
    flags: BTreeMap<String, Activation>,
}

const STATE_VERSION: u32 = 1;

/// The flag state of one moment, immutable; replaced as a whole on each change.
#[derive(Debug, Clone, Default)]
pub struct FlagState {
    /// Active flags by name.
    pub active: BTreeMap<String, Activation>,
    /// Mode of each flag of the config of `generation`, in config order.
    pub modes: Vec<FlagMode>,
    /// The config generation `modes` was computed for.
    pub generation: u64,
}

impl FlagState {
    /// Builds the state for `active` against `config`'s flags.
    pub fn new(
        active: BTreeMap<String, Activation>,
        lockdown: &LockdownConfig,
        generation: u64,
    ) -> Self {
        let modes = modes_for(&active, lockdown);
        Self {
            active,
            modes,
            generation,
        }
    }
}

/// Mode of each configured flag given the active set.
pub fn modes_for(
    active: &BTreeMap<String, Activation>,
    lockdown: &LockdownConfig,
) -> Vec<FlagMode> {
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
        let since = now_unix();
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
                        since,
                        expires: None,
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
        Ok(file) if file.version == STATE_VERSION => {
            let mut active = file.flags;
            active.retain(|name, _| {
                let known = lockdown.flag_index(name).is_some();
                if !known {
                    log::warn!(
                        "lockdown state: flag \"{name}\" is no longer in the config; dropped"
                    );
                }
                known
            });
            (active, Loaded::Restored)
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
    /// `enable`, `disable`, `expire`, `restore`, `corrupt_state`.
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
    /// The node that made the change.
    pub node: &'a str,
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

/// Parses a TTL such as `"2h"`; `None` or empty means no expiry.
pub fn parse_ttl(ttl: Option<&str>) -> Result<Option<Duration>, String> {
    match ttl.map(str::trim) {
        None | Some("") => Ok(None),
        Some(t) => rampart_config::parse_duration(t)
            .and_then(|d| {
                if d.is_zero() {
                    Err("ttl must be longer than zero".to_string())
                } else {
                    Ok(d)
                }
            })
            .map(Some)
            .map_err(|e| format!("ttl: {e}")),
    }
}
