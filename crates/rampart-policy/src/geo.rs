//! Country and ASN lookups from MaxMind DB files (memory-mapped).
//!
//! Both record shapes in use are read: GeoLite2/GeoIP2 (`country.iso_code`,
//! falling back to `registered_country.iso_code`; `autonomous_system_number`) and
//! ip-location-db (`country_code` at the top level), recognised per record, so no
//! schema setting is needed. Opening reads files; lookups do no I/O beyond page
//! faults on the mapping.

use maxminddb::Reader;
use rampart_config::GeoipConfig;
use serde::Deserialize;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// An upper-case ISO 3166-1 alpha-2 country code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CountryCode(pub [u8; 2]);

impl CountryCode {
    /// Parses two ASCII letters, any case.
    pub fn parse(text: &str) -> Option<Self> {
        let b = text.as_bytes();
        (b.len() == 2 && b.iter().all(u8::is_ascii_alphabetic))
            .then(|| CountryCode([b[0].to_ascii_uppercase(), b[1].to_ascii_uppercase()]))
    }

    /// As a `&str`.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("??")
    }
}

impl fmt::Display for CountryCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The country of a client the databases do not place (`??`).
pub const UNKNOWN_COUNTRY: CountryCode = CountryCode(*b"??");

/// What the databases say about one address.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GeoInfo {
    /// Country, when known.
    pub country: Option<CountryCode>,
    /// Autonomous system number, when known.
    pub asn: Option<u32>,
}

/// Why a database could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct GeoError {
    /// The file.
    pub path: PathBuf,
    /// What went wrong.
    pub reason: String,
}

/// One open database file.
pub struct GeoFile {
    reader: Reader<maxminddb::Mmap>,
    /// The file.
    pub path: PathBuf,
    /// Identity of the file on disk when opened (modification time, size).
    pub stamp: FileStamp,
}

impl fmt::Debug for GeoFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GeoFile")
            .field("path", &self.path)
            .field("database_type", &self.reader.metadata.database_type)
            .finish()
    }
}

/// Modification time and size: a change of either means a new file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    /// Last modification.
    pub modified: Option<SystemTime>,
    /// Size in bytes.
    pub len: u64,
}

impl FileStamp {
    /// The stamp of the file at `path` now.
    pub fn of(path: &Path) -> Option<Self> {
        let meta = std::fs::metadata(path).ok()?;
        Some(Self {
            modified: meta.modified().ok(),
            len: meta.len(),
        })
    }
}

impl GeoFile {
    /// Opens and checks `path`.
    #[allow(unsafe_code)]
    pub fn open(path: &Path) -> Result<Self, GeoError> {
        let err = |reason: String| GeoError {
            path: path.to_path_buf(),
            reason,
        };
        let stamp = FileStamp::of(path).ok_or_else(|| err("cannot read the file".into()))?;
        // SAFETY: a memory map is only unsound if the file changes underneath it.
        // Rampart's contract (README, deploy/geoip) is that database files are
        // replaced by writing a new file and renaming it over the old one, which
        // leaves this mapping on the old inode; they are never rewritten in place.
        let reader = unsafe { Reader::open_mmap(path) }.map_err(|e| err(e.to_string()))?;
        if reader.metadata.node_count == 0 {
            return Err(err("the database holds no networks".into()));
        }
        Ok(Self {
            reader,
            path: path.to_path_buf(),
            stamp,
        })
    }

    /// When the database was built (seconds since the epoch).
    pub fn build_epoch(&self) -> u64 {
        self.reader.metadata.build_epoch
    }

    /// The database's own name for its type.
    pub fn database_type(&self) -> &str {
        &self.reader.metadata.database_type
    }

    fn country(&self, ip: IpAddr) -> Option<CountryCode> {
        let record: CountryRecord = self.reader.lookup(ip).ok()?.decode().ok()??;
        let code = record
            .country
            .and_then(|c| c.iso_code)
            .or(record.country_code)
            .or(record.registered_country.and_then(|c| c.iso_code))?;
        CountryCode::parse(code)
    }

    /// The AS number only: the organisation is not decoded, so a lookup
    /// allocates nothing (it runs per request, and per connection at accept).
    fn asn_number(&self, ip: IpAddr) -> Option<u32> {
        let record: AsnNumberRecord = self.reader.lookup(ip).ok()?.decode().ok()??;
        record.autonomous_system_number.filter(|&n| n > 0)
    }

    fn asn(&self, ip: IpAddr) -> Option<(u32, Option<String>)> {
        let record: AsnRecord = self.reader.lookup(ip).ok()?.decode().ok()??;
        let asn = record.autonomous_system_number.filter(|&n| n > 0)?;
        Some((
            asn,
            record.autonomous_system_organization.map(str::to_string),
        ))
    }
}

#[derive(Deserialize)]
struct IsoCode<'a> {
    #[serde(borrow, default)]
    iso_code: Option<&'a str>,
}

#[derive(Deserialize)]
struct CountryRecord<'a> {
    #[serde(borrow, default)]
    country: Option<IsoCode<'a>>,
    #[serde(borrow, default)]
    registered_country: Option<IsoCode<'a>>,
    #[serde(borrow, default)]
    country_code: Option<&'a str>,
}

#[derive(Deserialize)]
struct AsnNumberRecord {
    #[serde(default)]
    autonomous_system_number: Option<u32>,
}

#[derive(Deserialize)]
struct AsnRecord<'a> {
    #[serde(default)]
    autonomous_system_number: Option<u32>,
    #[serde(borrow, default)]
    autonomous_system_organization: Option<&'a str>,
}

/// The configured databases; either may be absent.
#[derive(Debug, Default)]
pub struct GeoDb {
    /// Country database.
    pub country: Option<GeoFile>,
    /// ASN database.
    pub asn: Option<GeoFile>,
    /// Tells this opening apart from every other in the lookup cache (0: none
    /// opened).
    id: u64,
}

/// Ids of opened databases; never reused, so a cached answer of a database
/// that was replaced is never taken for the new one's.
static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Slots of the per-thread cache of recent lookups (a power of two).
const RECENT_SLOTS: usize = 1024;

/// One remembered lookup.
#[derive(Clone, Copy)]
struct Recent {
    db: u64,
    ip: IpAddr,
    geo: GeoInfo,
}

thread_local! {
    /// Recent lookups of this thread, direct-mapped by address: a flood from
    /// one address, a kept-alive connection's requests and a client's
    /// connections each walk the trees once. About 2 000 instructions per
    /// lookup of both databases against about 40 for a hit.
    static RECENT: std::cell::RefCell<Vec<Recent>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The cache slot of `ip` (Fibonacci hashing of the address).
fn recent_slot(ip: IpAddr) -> usize {
    const BITS: u32 = RECENT_SLOTS.trailing_zeros();
    let folded = match ip {
        IpAddr::V4(v4) => u64::from(u32::from(v4)),
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            (bits as u64) ^ ((bits >> 64) as u64)
        }
    };
    (folded.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - BITS)) as usize
}

impl GeoDb {
    /// Opens the databases named in `config`.
    pub fn open(config: &GeoipConfig) -> Result<Self, GeoError> {
        Ok(Self {
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            country: config
                .country_db
                .as_deref()
                .map(GeoFile::open)
                .transpose()?,
            asn: config.asn_db.as_deref().map(GeoFile::open).transpose()?,
        })
    }

    /// Country and ASN of `ip`, from this thread's cache of recent lookups
    /// when it holds them.
    pub fn lookup(&self, ip: IpAddr) -> GeoInfo {
        if self.country.is_none() && self.asn.is_none() {
            return GeoInfo::default();
        }
        let slot = recent_slot(ip);
        let cached = RECENT.with(|recent| {
            let recent = recent.try_borrow().ok()?;
            let hit = recent.get(slot)?;
            (hit.db == self.id && hit.ip == ip).then_some(hit.geo)
        });
        if let Some(geo) = cached {
            return geo;
        }
        let geo = self.lookup_files(ip);
        RECENT.with(|recent| {
            if let Ok(mut recent) = recent.try_borrow_mut() {
                if recent.is_empty() {
                    recent.resize(
                        RECENT_SLOTS,
                        Recent {
                            db: 0,
                            ip,
                            geo: GeoInfo::default(),
                        },
                    );
                }
                if let Some(entry) = recent.get_mut(slot) {
                    *entry = Recent {
                        db: self.id,
                        ip,
                        geo,
                    };
                }
            }
        });
        geo
    }

    /// Country and ASN of `ip`, read from the files.
    fn lookup_files(&self, ip: IpAddr) -> GeoInfo {
        GeoInfo {
            country: self.country.as_ref().and_then(|db| db.country(ip)),
            asn: self.asn.as_ref().and_then(|db| db.asn_number(ip)),
        }
    }

    /// The organisation that holds the AS of `ip`, for explanations.
    pub fn as_organization(&self, ip: IpAddr) -> Option<String> {
        self.asn
            .as_ref()
            .and_then(|db| db.asn(ip))
            .and_then(|(_, org)| org)
    }
}
