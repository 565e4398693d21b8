//! `[server]`, `[client_ip]`, `[request]` and `[access_log]`: process-wide settings.

use super::Validator;
use crate::*;

impl Validator {
    pub(super) fn server(&mut self, raw: file::FileServer) -> ServerConfig {
        let threads = match raw.threads {
            None => DEFAULT_THREADS,
            Some(n) if (1..=256).contains(&n) => n as usize,
            Some(n) => {
                self.issue("server.threads", format!("must be from 1 to 256, got {n}"));
                DEFAULT_THREADS
            }
        };
        let upstream_keepalive_pool_size = match raw.upstream_keepalive_pool_size {
            None => DEFAULT_KEEPALIVE_POOL_SIZE,
            Some(n) if (0..=1_000_000).contains(&n) => n as usize,
            Some(n) => {
                self.issue(
                    "server.upstream_keepalive_pool_size",
                    format!("must be from 0 to 1000000, got {n}"),
                );
                DEFAULT_KEEPALIVE_POOL_SIZE
            }
        };
        let http1_loop = match raw.http1_loop.as_deref() {
            None | Some("rampart") => Http1Loop::Rampart,
            Some("pingora-proxy") => Http1Loop::PingoraProxy,
            Some(other) => {
                self.issue(
                    "server.http1_loop",
                    format!("must be \"rampart\" or \"pingora-proxy\", got {other:?}"),
                );
                Http1Loop::Rampart
            }
        };
        ServerConfig {
            threads,
            work_stealing: raw.work_stealing.unwrap_or(false),
            upstream_keepalive_pool_size,
            http1_loop,
            grace_period: self.duration(
                "server.grace_period",
                raw.grace_period.as_deref(),
                DEFAULT_GRACE_PERIOD,
            ),
            graceful_shutdown_timeout: self.duration(
                "server.graceful_shutdown_timeout",
                raw.graceful_shutdown_timeout.as_deref(),
                DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT,
            ),
            client: ClientLimits {
                header_timeout: self.duration(
                    "server.client_header_timeout",
                    raw.client_header_timeout.as_deref(),
                    DEFAULT_HEADER_TIMEOUT,
                ),
                body_timeout: self.duration(
                    "server.client_body_timeout",
                    raw.client_body_timeout.as_deref(),
                    DEFAULT_BODY_TIMEOUT,
                ),
                keepalive_timeout: self.duration(
                    "server.keepalive_timeout",
                    raw.keepalive_timeout.as_deref(),
                    DEFAULT_KEEPALIVE_TIMEOUT,
                ),
                h2_idle_timeout: self.duration(
                    "server.h2_idle_timeout",
                    raw.h2_idle_timeout.as_deref(),
                    DEFAULT_H2_IDLE_TIMEOUT,
                ),
                max_head_bytes: self.bounded(
                    "server.max_request_head_bytes",
                    raw.max_request_head_bytes,
                    1024,
                    1 << 20,
                    DEFAULT_MAX_HEAD_BYTES as i64,
                ) as usize,
                max_headers: self.bounded(
                    "server.max_request_headers",
                    raw.max_request_headers,
                    8,
                    250,
                    DEFAULT_MAX_HEADERS as i64,
                ) as usize,
                max_connections_per_source: self.bounded(
                    "server.max_connections_per_source",
                    raw.max_connections_per_source,
                    0,
                    1_000_000,
                    i64::from(DEFAULT_MAX_CONNECTIONS_PER_SOURCE),
                ) as u32,
                read_buffer_bytes: self.bounded(
                    "server.client_read_buffer_bytes",
                    raw.client_read_buffer_bytes,
                    1024,
                    1 << 20,
                    DEFAULT_READ_BUFFER_BYTES as i64,
                ) as usize,
            },
        }
    }

    /// `value` when within `min..=max`, else an issue and `default`.
    pub(super) fn bounded(
        &mut self,
        key: &str,
        value: Option<i64>,
        min: i64,
        max: i64,
        default: i64,
    ) -> i64 {
        match value {
            None => default,
            Some(n) if (min..=max).contains(&n) => n,
            Some(n) => {
                self.issue(key, format!("must be from {min} to {max}, got {n}"));
                default
            }
        }
    }

    pub(super) fn client_ip(&mut self, raw: file::FileClientIp) -> ClientIpConfig {
        let mut trusted_proxies = Vec::new();
        for (i, text) in raw.trusted_proxies.unwrap_or_default().iter().enumerate() {
            match parse_cidr(text) {
                Ok(net) => trusted_proxies.push(net),
                Err(e) => self.issue(format!("client_ip.trusted_proxies[{i}]"), e),
            }
        }
        let header = match raw
            .header
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("x-forwarded-for") => ForwardedHeader::XForwardedFor,
            Some("forwarded") => ForwardedHeader::Forwarded,
            Some(other) => {
                self.issue(
                    "client_ip.header",
                    format!(
                        "\"{other}\" is not supported (use \"x-forwarded-for\" or \"forwarded\")"
                    ),
                );
                ForwardedHeader::XForwardedFor
            }
        };
        ClientIpConfig {
            trusted_proxies,
            header,
        }
    }

    pub(super) fn request(&mut self, raw: file::FileRequest) -> RequestConfig {
        let mut config = RequestConfig {
            allow_semicolons: raw.allow_semicolons.unwrap_or(false),
            ..RequestConfig::default()
        };
        if let Some(names) = raw.strip_headers {
            config.strip_headers.clear();
            for (i, name) in names.iter().enumerate() {
                let normal = name.to_ascii_lowercase().replace('_', "-");
                let token = !normal.is_empty()
                    && normal
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^`|~".contains(&b));
                if !token {
                    self.issue(
                        format!("request.strip_headers[{i}]"),
                        format!("\"{name}\" is not a header field name"),
                    );
                } else {
                    config.strip_headers.push(normal);
                }
            }
        }
        config.strip_headers.sort();
        config.strip_headers.dedup();
        config
    }

    pub(super) fn access_log(&mut self, raw: file::FileAccessLog) -> AccessLogConfig {
        let target = match (raw.enabled.unwrap_or(false), raw.path.as_deref()) {
            (false, _) => None,
            (true, None | Some("-")) => Some(AccessLogTarget::Stdout),
            (true, Some(p)) => Some(AccessLogTarget::File(self.relative_path(p))),
        };
        let rejected_lines_per_second = match raw.rejected_lines_per_second {
            None => DEFAULT_REJECTED_LINES_PER_SECOND,
            Some(n) if (0..=1_000_000).contains(&n) => n as u32,
            Some(n) => {
                self.issue(
                    "access_log.rejected_lines_per_second",
                    format!("must be from 0 to 1000000, got {n}"),
                );
                DEFAULT_REJECTED_LINES_PER_SECOND
            }
        };
        AccessLogConfig {
            target,
            rejected_lines_per_second,
        }
    }

    pub(super) fn record(&mut self, raw: file::FileRecord) -> RecordConfig {
        let defaults = RecordConfig::default();
        let mut number = |key: &str,
                          value: Option<i64>,
                          range: std::ops::RangeInclusive<i64>,
                          default: u64| match value {
            None => default,
            Some(n) if range.contains(&n) => n as u64,
            Some(n) => {
                self.issue(
                    format!("record.{key}"),
                    format!("must be from {} to {}, got {n}", range.start(), range.end()),
                );
                default
            }
        };
        let max_file_mb = number(
            "max_file_mb",
            raw.max_file_mb,
            1..=65_536,
            defaults.max_file_bytes >> 20,
        );
        let max_total_mb = number(
            "max_total_mb",
            raw.max_total_mb,
            1..=16_777_216,
            defaults.max_total_bytes >> 20,
        );
        let full_rate_per_second = number(
            "full_rate_per_second",
            raw.full_rate_per_second,
            0..=10_000_000,
            u64::from(defaults.full_rate_per_second),
        ) as u32;
        let flood_sample = number(
            "flood_sample",
            raw.flood_sample,
            1..=1_000_000,
            u64::from(defaults.flood_sample),
        ) as u32;
        if max_total_mb < max_file_mb {
            self.issue(
                "record.max_total_mb",
                format!("must be at least max_file_mb ({max_file_mb}), got {max_total_mb}"),
            );
        }
        let mut headers = Vec::new();
        for (i, name) in raw.headers.unwrap_or_default().into_iter().enumerate() {
            if !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                headers.push(name.to_ascii_lowercase());
            } else {
                self.issue(
                    format!("record.headers[{i}]"),
                    format!("{name:?} is not a header name"),
                );
            }
        }
        headers.sort();
        headers.dedup();
        let dir = match (raw.enabled.unwrap_or(false), raw.dir.as_deref()) {
            (false, _) => None,
            (true, None) => {
                self.issue(
                    "record.dir",
                    "recording is enabled: name the directory of the record files",
                );
                None
            }
            (true, Some(d)) => Some(self.relative_path(d)),
        };
        RecordConfig {
            dir,
            max_file_bytes: max_file_mb << 20,
            max_total_bytes: max_total_mb << 20,
            full_rate_per_second,
            flood_sample,
            headers,
        }
    }
}
