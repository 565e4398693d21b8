//! Keys and rules read from request bodies: `key = "body"` limits and the
//! `body_rules` of lockdown flags.

use super::{list_or_none, Validator};
use crate::*;

impl Validator {
    pub(super) fn body_key(
        &mut self,
        key: &str,
        field: Option<String>,
        normalize: Option<String>,
        number_prefix: Option<i64>,
        max_body_bytes: Option<i64>,
    ) -> BodyKeyConfig {
        let field = match field {
            Some(f) if !f.is_empty() => f,
            _ => {
                self.issue(
                    format!("{key}.field"),
                    "is required with key = \"body\" (e.g. \"username\" or \"/user/phone\")",
                );
                String::new()
            }
        };
        let pointer = match field_pointer(&field) {
            Ok(p) => p,
            Err(why) => {
                if !field.is_empty() {
                    self.issue(format!("{key}.field"), why);
                }
                Vec::new()
            }
        };
        let normalize = match normalize.as_deref() {
            None | Some("account") => BodyKeyNormalize::Account,
            Some("phone") => BodyKeyNormalize::Phone,
            Some(other) => {
                self.issue(
                    format!("{key}.normalize"),
                    format!("\"{other}\" is not a normalisation (use \"account\" or \"phone\")"),
                );
                BodyKeyNormalize::Account
            }
        };
        let number_prefix = match number_prefix {
            None => None,
            Some(_) if normalize != BodyKeyNormalize::Phone => {
                self.issue(
                    format!("{key}.number_prefix"),
                    "only with normalize = \"phone\"",
                );
                None
            }
            Some(n) if (1..=15).contains(&n) => Some(n as u8),
            Some(n) => {
                self.issue(
                    format!("{key}.number_prefix"),
                    format!("must be from 1 to 15 digits of the E.164 number, got {n}"),
                );
                None
            }
        };
        let max_body_bytes = match max_body_bytes {
            None => DEFAULT_MAX_BODY_BYTES,
            Some(n) if n >= 1 && (n as usize) <= MAX_BODY_BYTES_LIMIT => n as usize,
            Some(n) => {
                self.issue(
                    format!("{key}.max_body_bytes"),
                    format!("must be from 1 to {MAX_BODY_BYTES_LIMIT} (the body is replayed from a 64 KiB buffer), got {n}"),
                );
                DEFAULT_MAX_BODY_BYTES
            }
        };
        BodyKeyConfig {
            field,
            pointer,
            normalize,
            number_prefix,
            max_body_bytes,
        }
    }

    /// One `body_rules` entry of a flag at `bkey`; `None` when its route is
    /// missing or unknown (the issue is recorded).
    pub(super) fn body_rule(
        &mut self,
        bkey: &str,
        b: file::FileBodyRule,
        routes: &[String],
    ) -> Option<BodyRuleConfig> {
        let route = match b.route {
            None => {
                self.issue(format!("{bkey}.route"), "is required");
                None
            }
            Some(name) => {
                let found = routes.iter().position(|r| *r == name);
                if found.is_none() {
                    self.issue(
                        format!("{bkey}.route"),
                        format!("unknown route \"{name}\" (known: {})", list_or_none(routes)),
                    );
                }
                found
            }
        };
        let field = match b.field {
            Some(f) if !f.is_empty() => f,
            _ => {
                self.issue(format!("{bkey}.field"), "is required (e.g. \"phone\")");
                String::new()
            }
        };
        let pointer = match field_pointer(&field) {
            Ok(p) => p,
            Err(why) => {
                self.issue(format!("{bkey}.field"), why);
                Vec::new()
            }
        };
        let mut codes = Vec::new();
        for (k, c) in b
            .allowed_calling_codes
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            let digits = c.trim().trim_start_matches('+');
            if (1..=3).contains(&digits.len())
                && digits.bytes().all(|d| d.is_ascii_digit())
                && !digits.starts_with('0')
            {
                codes.push(digits.to_string());
            } else {
                self.issue(
                    format!("{bkey}.allowed_calling_codes[{k}]"),
                    format!("\"{c}\" is not a country calling code (e.g. \"+86\")"),
                );
            }
        }
        let mut regions = Vec::new();
        for (k, r) in b.allowed_regions.unwrap_or_default().iter().enumerate() {
            if r.len() == 2 && r.bytes().all(|c| c.is_ascii_uppercase()) {
                regions.push(r.clone());
            } else {
                self.issue(
                    format!("{bkey}.allowed_regions[{k}]"),
                    format!("\"{r}\" is not a region code (two upper-case letters, e.g. \"CN\")"),
                );
            }
        }
        if codes.is_empty() && regions.is_empty() {
            self.issue(
                bkey,
                "needs allowed_regions (e.g. [\"CN\"]) or allowed_calling_codes (e.g. [\"+86\"])",
            );
        }
        let mut number_types = Vec::new();
        for (k, t) in b.number_types.unwrap_or_default().iter().enumerate() {
            match PhoneType::parse(t) {
                Some(t) => number_types.push(t),
                None => {
                    let known: Vec<&str> = PhoneType::ALL.iter().map(|(_, n)| *n).collect();
                    self.issue(
                        format!("{bkey}.number_types[{k}]"),
                        format!("\"{t}\" is not a number type (known: {})", known.join(", ")),
                    );
                }
            }
        }
        let mut methods = Vec::new();
        for (k, m) in b.methods.unwrap_or_default().into_iter().enumerate() {
            if m.is_empty() || !m.bytes().all(|c| c.is_ascii_alphabetic()) {
                self.issue(
                    format!("{bkey}.methods[{k}]"),
                    format!("\"{m}\" is not an HTTP method"),
                );
            } else {
                methods.push(m.to_ascii_uppercase());
            }
        }
        let max_body_bytes = match b.max_body_bytes {
            None => DEFAULT_MAX_BODY_BYTES,
            Some(n) if n >= 1 && (n as usize) <= MAX_BODY_BYTES_LIMIT => n as usize,
            Some(n) => {
                self.issue(
                    format!("{bkey}.max_body_bytes"),
                    format!("must be from 1 to {MAX_BODY_BYTES_LIMIT} (the body is replayed from a 64 KiB buffer), got {n}"),
                );
                DEFAULT_MAX_BODY_BYTES
            }
        };
        Some(BodyRuleConfig {
            route: route?,
            field,
            pointer,
            allowed_calling_codes: codes,
            allowed_regions: regions,
            number_types,
            methods,
            max_body_bytes,
        })
    }
}

/// The segments of a body field: a top-level name, or a JSON Pointer (RFC 6901)
/// when it starts with `/`.
pub(super) fn field_pointer(field: &str) -> Result<Vec<String>, String> {
    let Some(rest) = field.strip_prefix('/') else {
        return Ok(vec![field.to_string()]);
    };
    rest.split('/')
        .map(|seg| {
            let mut out = String::with_capacity(seg.len());
            let mut chars = seg.chars();
            while let Some(c) = chars.next() {
                match c {
                    '~' => match chars.next() {
                        Some('0') => out.push('~'),
                        Some('1') => out.push('/'),
                        _ => {
                            return Err(format!(
                                "\"{field}\" is not a JSON Pointer: '~' must be followed by 0 or 1"
                            ))
                        }
                    },
                    c => out.push(c),
                }
            }
            if out.is_empty() {
                return Err(format!("\"{field}\" has an empty segment"));
            }
            Ok(out)
        })
        .collect()
}
