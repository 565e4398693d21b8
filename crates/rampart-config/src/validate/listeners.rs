//! `[[listeners]]` and `[admin]`: the addresses Rampart binds, TLS files and the PROXY protocol.

use super::Validator;
use crate::*;
use std::net::SocketAddr;
use std::path::PathBuf;

impl Validator {
    pub(super) fn listeners(&mut self, raw: Vec<file::FileListener>) -> Vec<ListenerConfig> {
        if raw.is_empty() {
            self.issue("listeners", "at least one [[listeners]] entry is required");
            return Vec::new();
        }
        let mut out: Vec<ListenerConfig> = Vec::new();
        for (i, l) in raw.into_iter().enumerate() {
            let key = format!("listeners[{i}]");
            let Some(text) = l.address.as_deref() else {
                self.issue(format!("{key}.address"), "is required");
                continue;
            };
            let Some(address) = self.socket_addr(&format!("{key}.address"), text) else {
                continue;
            };
            if out.iter().any(|o| o.address == address) {
                self.issue(
                    format!("{key}.address"),
                    format!("{address} is used by another listener"),
                );
            }
            let wants_tls = l.tls.is_some();
            let h2c = l.h2c.unwrap_or(false);
            if h2c && wants_tls {
                self.issue(
                    format!("{key}.h2c"),
                    "only for plaintext listeners; TLS listeners offer HTTP/2 through ALPN",
                );
            }
            let tls = match l.tls {
                None => None,
                Some(tls) => {
                    let cert = self.tls_file(&format!("{key}.tls.cert"), tls.cert.as_deref());
                    let key_file = self.tls_file(&format!("{key}.tls.key"), tls.key.as_deref());
                    match (cert, key_file) {
                        (Some(cert), Some(key)) => Some(TlsConfig { cert, key }),
                        _ => None,
                    }
                }
            };
            let proxy_protocol = self.proxy_protocol(&key, l.proxy_protocol, l.proxy_protocol_from);
            out.push(ListenerConfig {
                address,
                h2c,
                tls,
                proxy_protocol,
            });
        }
        out
    }

    pub(super) fn proxy_protocol(
        &mut self,
        key: &str,
        version: Option<String>,
        from: Option<Vec<String>>,
    ) -> Option<ProxyProtocolConfig> {
        let version = match version.as_deref() {
            None => {
                if from.is_some() {
                    self.issue(
                        format!("{key}.proxy_protocol_from"),
                        "only with proxy_protocol = \"v1\", \"v2\" or \"any\"",
                    );
                }
                return None;
            }
            Some("v1") => ProxyProtocolVersion::V1,
            Some("v2") => ProxyProtocolVersion::V2,
            Some("any") => ProxyProtocolVersion::Any,
            Some(other) => {
                self.issue(
                    format!("{key}.proxy_protocol"),
                    format!("\"{other}\" is not a PROXY protocol version (use \"v1\", \"v2\" or \"any\")"),
                );
                return None;
            }
        };
        let mut nets = Vec::new();
        match from {
            None => self.issue(
                format!("{key}.proxy_protocol_from"),
                "is required with proxy_protocol: the load balancers' addresses (CIDRs); a header from anyone else is refused",
            ),
            Some(list) if list.is_empty() => self.issue(
                format!("{key}.proxy_protocol_from"),
                "must name at least one network (the load balancers' addresses)",
            ),
            Some(list) => {
                for (i, text) in list.iter().enumerate() {
                    match parse_cidr(text) {
                        Ok(net) => nets.push(net),
                        Err(e) => self.issue(format!("{key}.proxy_protocol_from[{i}]"), e),
                    }
                }
            }
        }
        Some(ProxyProtocolConfig {
            version,
            from: nets,
        })
    }

    pub(super) fn tls_file(&mut self, key: &str, name: Option<&str>) -> Option<PathBuf> {
        let Some(name) = name else {
            self.issue(key, "is required for a TLS listener");
            return None;
        };
        let path = self.relative_path(name);
        // A stat of a local file the config names, like reading the config
        // itself: no network, and a typo is caught by `rampart check` rather
        // than at start-up.
        if !path.is_file() {
            self.issue(key, format!("file {} does not exist", path.display()));
            return None;
        }
        Some(path)
    }

    pub(super) fn admin(
        &mut self,
        raw: file::FileAdmin,
        listeners: &[ListenerConfig],
    ) -> Option<AdminConfig> {
        let text = raw.address.as_deref().unwrap_or(DEFAULT_ADMIN_ADDRESS);
        let address = self.socket_addr("admin.address", text);
        if let Some(address) = address {
            if listeners.iter().any(|l| clashes(l.address, address)) {
                self.issue(
                    "admin.address",
                    format!("{address} overlaps a public listener; the admin API must never be on the public listener"),
                );
            }
        }
        let token = match (raw.token_env, raw.token_file) {
            (Some(_), Some(_)) => {
                self.issue("admin", "set token_env or token_file, not both");
                TokenSource::Env(DEFAULT_ADMIN_TOKEN_ENV.to_string())
            }
            (Some(env), None) if env.is_empty() => {
                self.issue("admin.token_env", "must not be empty");
                TokenSource::Env(DEFAULT_ADMIN_TOKEN_ENV.to_string())
            }
            (Some(env), None) => TokenSource::Env(env),
            (None, Some(file)) => TokenSource::File(self.relative_path(&file)),
            (None, None) => TokenSource::Env(DEFAULT_ADMIN_TOKEN_ENV.to_string()),
        };
        Some(AdminConfig {
            address: address?,
            token,
        })
    }
}

/// Two listen addresses clash when the ports match and either binds every address.
pub(super) fn clashes(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}
