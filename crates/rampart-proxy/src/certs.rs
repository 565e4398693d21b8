//! TLS certificates and keys that are swapped without a restart.
//!
//! Each TLS listener serves the certificate of its [`TlsCert`], a rustls
//! certificate resolver (Pingora's `TlsSettings::set_cert_resolver`) whose
//! certificate and key sit behind an `ArcSwap`. Every handshake reads the one
//! in place when it starts; a handshake or connection already under way keeps
//! the one it started with, so a swap drops nothing.
//!
//! **When.** On SIGHUP and `POST /reload` (with the config), and when the files
//! change: [`CertWatch`] looks at both files every [`TLS_CHECK_INTERVAL`]
//! (device, inode, size, modification time: an `mv` over the file, a
//! rewrite in place and a Kubernetes secret's symlink swap all show), and
//! loads them once they have stayed the same for one interval, so a pair being
//! written is not read half way.
//!
//! **What is checked.** Both files are read and parsed (PEM: at least one
//! `CERTIFICATE`, one private key in PKCS#8, PKCS#1 or SEC1 form), the key must
//! be one rustls signs with and must match the first certificate's public key.
//! A pair that fails is logged, counted
//! (`rampart_tls_certificate_reloads_total{result="error"}`) and shown in
//! `/status`; the certificate in place keeps serving, and the same files are
//! not tried again until they change (or the next SIGHUP).
//!
//! The files are the ones the listener named at start: `[[listeners]]` change
//! only on restart.

use crate::metrics::Attempt;
use crate::state::Shared;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora::tls::sign::CertifiedKey;
use pingora::tls::{CertificateDer, ClientHello, PrivateKeyDer, ResolvesServerCert};
use rustls_pki_types::pem::PemObject;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often [`CertWatch`] looks at the certificate and key files.
pub const TLS_CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// What identifies a version of a file: a new file (rename, symlink swap) has
/// another inode, a rewrite another size or modification time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
}

fn file_id(path: &Path) -> Option<FileId> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(FileId {
        dev: m.dev(),
        ino: m.ino(),
        size: m.size(),
        mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
    })
}

/// Both files' identities, `None` while either is missing.
fn pair_id(cert: &Path, key: &Path) -> Option<(FileId, FileId)> {
    Some((file_id(cert)?, file_id(key)?))
}

/// Reads and checks a certificate chain and its key (see the module doc).
pub fn load_pair(cert: &Path, key: &Path) -> Result<CertifiedKey, String> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    };
    let cert_pem = read(cert)?;
    let key_pem = read(key)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{} is not valid PEM: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{} holds no PEM CERTIFICATE", cert.display()));
    }
    let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => {
            format!("{} holds no PEM PRIVATE KEY", key.display())
        }
        e => format!("{} is not valid PEM: {e}", key.display()),
    })?;
    pingora::tls::install_default_crypto_provider();
    let provider =
        pingora::tls::CryptoProvider::get_default().ok_or("no TLS crypto provider is installed")?;
    CertifiedKey::from_der(chain, private, provider).map_err(|e| {
        format!(
            "cannot serve the certificate in {} with the key in {}: {e}",
            cert.display(),
            key.display()
        )
    })
}

/// What the watcher knows of the files.
#[derive(Debug, Default)]
struct Watch {
    /// The files the certificate in place was read from.
    loaded: Option<(FileId, FileId)>,
    /// What the last look saw (a change is loaded once it stays one interval).
    seen: Option<(FileId, FileId)>,
    /// Files that failed to load (not tried again until they change).
    failed: Option<(FileId, FileId)>,
    /// Why the last attempt failed, when it did.
    last_error: Option<String>,
    /// When the certificate in place was loaded (Unix seconds).
    loaded_at: u64,
    /// Successful loads since start, the first one included.
    loads: u64,
}

/// The certificate and key of one TLS listener, swapped in place.
pub struct TlsCert {
    /// The listener's address (logs, `/status`).
    pub address: String,
    cert_path: PathBuf,
    key_path: PathBuf,
    current: ArcSwap<CertifiedKey>,
    watch: Mutex<Watch>,
}

impl std::fmt::Debug for TlsCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsCert")
            .field("address", &self.address)
            .field("cert", &self.cert_path)
            .field("key", &self.key_path)
            .finish()
    }
}

impl TlsCert {
    /// Loads the listener's pair at start; an error stops the start.
    pub fn load(address: &str, cert: &Path, key: &Path) -> Result<Self, String> {
        let before = pair_id(cert, key);
        let pair = load_pair(cert, key)?;
        Ok(Self {
            address: address.to_string(),
            cert_path: cert.to_path_buf(),
            key_path: key.to_path_buf(),
            current: ArcSwap::from_pointee(pair),
            watch: Mutex::new(Watch {
                loaded: before,
                seen: before,
                loaded_at: crate::lockdown::now_unix(),
                loads: 1,
                ..Watch::default()
            }),
        })
    }

    fn watch(&self) -> std::sync::MutexGuard<'_, Watch> {
        // A poisoned lock only held bookkeeping; the certificate is in the ArcSwap.
        self.watch.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Loads the files now (SIGHUP, `POST /reload`): swaps the certificate
    /// in, or keeps the one in place and says why.
    pub fn reload(&self, shared: &Shared) -> Result<(), String> {
        let before = pair_id(&self.cert_path, &self.key_path);
        self.attempt(before, shared)
    }

    /// Loads the files when they changed and have stayed the same since the
    /// last look ([`CertWatch`]).
    pub fn check(&self, shared: &Shared) {
        let now = pair_id(&self.cert_path, &self.key_path);
        {
            let mut w = self.watch();
            let seen = std::mem::replace(&mut w.seen, now);
            // Missing (a swap under way), unchanged, still changing, or a
            // version already refused: nothing to do.
            if now.is_none() || now == w.loaded || now != seen || now == w.failed {
                return;
            }
        }
        let _ = self.attempt(now, shared);
    }

    fn attempt(&self, before: Option<(FileId, FileId)>, shared: &Shared) -> Result<(), String> {
        let result = load_pair(&self.cert_path, &self.key_path);
        // Files replaced while they were read: the next look loads them again.
        let stable = pair_id(&self.cert_path, &self.key_path) == before;
        let mut w = self.watch();
        match result {
            Ok(pair) => {
                self.current.store(Arc::new(pair));
                w.loaded = if stable { before } else { None };
                w.failed = None;
                w.last_error = None;
                w.loaded_at = crate::lockdown::now_unix();
                w.loads += 1;
                shared.metrics.tls_certificate_reload(Attempt::Success);
                log::info!(
                    "TLS listener {}: certificate {} and key {} loaded; new handshakes use them",
                    self.address,
                    self.cert_path.display(),
                    self.key_path.display()
                );
                Ok(())
            }
            Err(e) => {
                w.failed = if stable { before } else { None };
                w.last_error = Some(e.clone());
                shared.metrics.tls_certificate_reload(Attempt::Error);
                log::error!(
                    "TLS listener {}: certificate not reloaded, the previous one keeps serving: {e}",
                    self.address
                );
                Err(e)
            }
        }
    }

    /// For `/status`: the files, when the certificate in place was loaded,
    /// how many loads succeeded, and the last error if the last attempt failed.
    pub fn status(&self) -> serde_json::Value {
        let w = self.watch();
        serde_json::json!({
            "listener": self.address,
            "cert": self.cert_path.display().to_string(),
            "key": self.key_path.display().to_string(),
            "loaded_at": w.loaded_at,
            "loads": w.loads,
            "last_error": w.last_error,
        })
    }
}

impl ResolvesServerCert for TlsCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// Reloads every TLS listener's certificate (SIGHUP, `POST /reload`), off the
/// runtime's worker threads.
pub async fn reload_all(shared: &Arc<Shared>) {
    if shared.tls_certs.is_empty() {
        return;
    }
    let shared = shared.clone();
    let _ = tokio::task::spawn_blocking(move || {
        for cert in &shared.tls_certs {
            // Logged and counted by `reload`.
            let _ = cert.reload(&shared);
        }
    })
    .await;
}

/// The background service that notices changed certificate and key files.
pub struct CertWatch {
    shared: Arc<Shared>,
}

impl CertWatch {
    /// Watches the files of `shared`'s TLS listeners.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

#[async_trait]
impl BackgroundService for CertWatch {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        if self.shared.tls_certs.is_empty() {
            return;
        }
        let mut tick = tokio::time::interval(TLS_CHECK_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let shared = self.shared.clone();
                    let _ = tokio::task::spawn_blocking(move || {
                        for cert in &shared.tls_certs {
                            cert.check(&shared);
                        }
                    })
                    .await;
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let cert = rcgen::generate_simple_self_signed(vec![name.to_string()])
            .unwrap_or_else(|e| panic!("{e}"));
        let (c, k) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.cert.pem()).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(&k, cert.key_pair.serialize_pem()).unwrap_or_else(|e| panic!("{e}"));
        (c, k)
    }

    #[test]
    fn pairs_are_checked_with_clear_reasons() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (a_cert, a_key) = pair(dir.path(), "a");
        let (_, b_key) = pair(dir.path(), "b");
        assert!(load_pair(&a_cert, &a_key).is_ok());
        let e = load_pair(&a_cert, &b_key).err().unwrap_or_default();
        assert!(e.contains("cannot serve the certificate"), "{e}");
        let e = load_pair(&a_key, &a_key).err().unwrap_or_default();
        assert!(e.contains("holds no PEM CERTIFICATE"), "{e}");
        let e = load_pair(&a_cert, &a_cert).err().unwrap_or_default();
        assert!(e.contains("holds no PEM PRIVATE KEY"), "{e}");
        let e = load_pair(&dir.path().join("none"), &a_key)
            .err()
            .unwrap_or_default();
        assert!(e.contains("cannot read"), "{e}");
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(
            &garbage,
            "-----BEGIN CERTIFICATE-----\n%%%\n-----END CERTIFICATE-----\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(load_pair(&garbage, &a_key).is_err());
    }
}
