//! `[pools.NAME]`: origin servers, timeouts and health checks. Server names stay
//! unresolved here: the proxy resolves them when it applies the config.

use super::{is_name, Validator};
use crate::*;

impl Validator {
    pub(super) fn pool(&mut self, name: String, raw: file::FilePool) -> Option<PoolConfig> {
        let key = format!("pools.{name}");
        if !is_name(&name) {
            self.issue(
                &key,
                "pool names use lower-case letters, digits, '_' and '-' only",
            );
        }
        let mut servers = Vec::new();
        let list = raw.servers.unwrap_or_default();
        if list.is_empty() {
            self.issue(format!("{key}.servers"), "at least one server is required");
        }
        for (i, text) in list.iter().enumerate() {
            match ServerAddress::parse(text) {
                Ok(addr) => servers.push(addr),
                Err(e) => self.issue(format!("{key}.servers[{i}]"), e),
            }
        }
        let tls = raw.tls.unwrap_or(false);
        let sni = raw.sni.clone().unwrap_or_else(|| {
            list.first()
                .and_then(|s| s.rsplit_once(':').map(|(h, _)| h.to_string()))
                .unwrap_or_default()
        });
        let connect_timeout = self.nonzero_duration(
            &format!("{key}.connect_timeout"),
            raw.connect_timeout.as_deref(),
            DEFAULT_CONNECT_TIMEOUT,
        );
        let read_timeout = self.nonzero_duration(
            &format!("{key}.read_timeout"),
            raw.read_timeout.as_deref(),
            DEFAULT_READ_TIMEOUT,
        );
        let write_timeout = self.nonzero_duration(
            &format!("{key}.write_timeout"),
            raw.write_timeout.as_deref(),
            DEFAULT_WRITE_TIMEOUT,
        );
        let idle_timeout = self.nonzero_duration(
            &format!("{key}.idle_timeout"),
            raw.idle_timeout.as_deref(),
            DEFAULT_IDLE_TIMEOUT,
        );
        let hc = raw.health_check.unwrap_or_default();
        let hkey = format!("{key}.health_check");
        let kind = match hc.kind.as_deref() {
            None | Some("tcp") => {
                if hc.path.is_some() {
                    self.issue(format!("{hkey}.path"), "only used with kind = \"http\"");
                }
                HealthCheckKind::Tcp
            }
            Some("http") => {
                let path = hc.path.unwrap_or_else(|| "/".to_string());
                if !path.starts_with('/') {
                    self.issue(format!("{hkey}.path"), "must start with '/'");
                }
                HealthCheckKind::Http {
                    path,
                    host: hc.host.unwrap_or_else(|| "localhost".to_string()),
                }
            }
            Some(other) => {
                self.issue(
                    format!("{hkey}.kind"),
                    format!("\"{other}\" is not a health check kind (use \"http\" or \"tcp\")"),
                );
                HealthCheckKind::Tcp
            }
        };
        let health_check = HealthCheckConfig {
            kind,
            interval: self.nonzero_duration(
                &format!("{hkey}.interval"),
                hc.interval.as_deref(),
                DEFAULT_HEALTH_INTERVAL,
            ),
            timeout: self.nonzero_duration(
                &format!("{hkey}.timeout"),
                hc.timeout.as_deref(),
                DEFAULT_HEALTH_TIMEOUT,
            ),
            healthy_threshold: self.count(
                &format!("{hkey}.healthy_threshold"),
                hc.healthy_threshold,
                DEFAULT_HEALTHY_THRESHOLD,
            ),
            unhealthy_threshold: self.count(
                &format!("{hkey}.unhealthy_threshold"),
                hc.unhealthy_threshold,
                DEFAULT_UNHEALTHY_THRESHOLD,
            ),
        };
        Some(PoolConfig {
            connect_timeout,
            read_timeout,
            write_timeout,
            idle_timeout,
            name,
            servers,
            tls,
            sni,
            health_check,
        })
    }
}
