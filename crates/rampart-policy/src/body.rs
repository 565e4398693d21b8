//! Body rules: a phone number in a JSON or form body must carry an allowed
//! country calling code ("new registrations only for +86 mobile numbers").
//!
//! Normalisation: spaces, dashes, dots and parentheses are dropped, a leading
//! `00` becomes `+`; what remains must be `+` and 6 to 15 digits (E.164). A
//! number without its calling code cannot be attributed to a country and is
//! refused like a number from a country that is not allowed.

use rampart_config::BodyRuleConfig;

/// Why a body was refused; becomes a 400, 403 or 413 problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyRefusal {
    /// Larger than the rule reads (413).
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// Not parseable, or the field is missing or not a string (400).
    Malformed(String),
    /// The number's calling code is not allowed (403).
    NotAllowed(String),
}

impl BodyRefusal {
    /// HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            BodyRefusal::TooLarge { .. } => 413,
            BodyRefusal::Malformed(_) => 400,
            BodyRefusal::NotAllowed(_) => 403,
        }
    }

    /// Human detail.
    pub fn detail(&self) -> String {
        match self {
            BodyRefusal::TooLarge { limit } => {
                format!("The request body is larger than {limit} bytes.")
            }
            BodyRefusal::Malformed(why) | BodyRefusal::NotAllowed(why) => why.clone(),
        }
    }
}

/// Normalises a phone number to `+` and digits, or `None` when it is not an
/// international number.
pub fn normalize_phone(raw: &str) -> Option<String> {
    let mut out = String::with_capacity(raw.len());
    for c in raw.trim().chars() {
        match c {
            ' ' | '-' | '.' | '(' | ')' | '\u{a0}' => {}
            '+' if out.is_empty() => out.push('+'),
            d if d.is_ascii_digit() => out.push(d),
            _ => return None,
        }
    }
    let out = match out.strip_prefix("00") {
        Some(rest) if !out.starts_with('+') => format!("+{rest}"),
        _ => out,
    };
    let digits = out.strip_prefix('+')?;
    ((6..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit())).then_some(out)
}

/// The value of `field` in a JSON object or a form body.
fn field_value(
    content_type: Option<&str>,
    body: &[u8],
    field: &str,
) -> Result<String, BodyRefusal> {
    let ct = content_type.unwrap_or("").to_ascii_lowercase();
    if ct.starts_with("application/x-www-form-urlencoded") {
        let text = std::str::from_utf8(body)
            .map_err(|_| BodyRefusal::Malformed("The form body is not valid UTF-8.".into()))?;
        return text
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .find(|(k, _)| form_decode(k) == field)
            .map(|(_, v)| form_decode(v))
            .ok_or_else(|| BodyRefusal::Malformed(format!("The form has no \"{field}\" field.")));
    }
    // JSON is the default: registration APIs speak it, and guessing costs nothing.
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| BodyRefusal::Malformed(format!("The body is not valid JSON: {e}.")))?;
    match value.get(field) {
        Some(serde_json::Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(BodyRefusal::Malformed(format!(
            "The \"{field}\" field must be a string."
        ))),
        None => Err(BodyRefusal::Malformed(format!(
            "The body has no \"{field}\" field."
        ))),
    }
}

fn form_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Checks one body against `rule`.
pub fn check_body(
    rule: &BodyRuleConfig,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<(), BodyRefusal> {
    if body.len() > rule.max_body_bytes {
        return Err(BodyRefusal::TooLarge {
            limit: rule.max_body_bytes,
        });
    }
    let raw = field_value(content_type, body, &rule.field)?;
    let allowed = || {
        rule.allowed_calling_codes
            .iter()
            .map(|c| format!("+{c}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let Some(number) = normalize_phone(&raw) else {
        return Err(BodyRefusal::NotAllowed(format!(
            "\"{}\" must be an international phone number starting with an allowed calling code ({}).",
            rule.field,
            allowed()
        )));
    };
    let digits = &number[1..];
    if rule
        .allowed_calling_codes
        .iter()
        .any(|c| digits.starts_with(c.as_str()))
    {
        Ok(())
    } else {
        Err(BodyRefusal::NotAllowed(format!(
            "Registration is temporarily limited to phone numbers with calling code {}.",
            allowed()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule() -> BodyRuleConfig {
        BodyRuleConfig {
            route: 0,
            field: "phone".into(),
            allowed_calling_codes: vec!["86".into()],
            max_body_bytes: 256,
        }
    }

    #[test]
    fn numbers_are_normalised() {
        assert_eq!(
            normalize_phone("+86 138-0013 8000").as_deref(),
            Some("+8613800138000")
        );
        assert_eq!(
            normalize_phone("0086 (138) 0013.8000").as_deref(),
            Some("+8613800138000")
        );
        assert_eq!(
            normalize_phone("+1 (415) 555-0100").as_deref(),
            Some("+14155550100")
        );
        assert_eq!(normalize_phone("13800138000"), None); // no calling code
        assert_eq!(normalize_phone("+86 138 x 0013"), None);
        assert_eq!(normalize_phone("+8+6123456"), None);
    }

    #[test]
    fn json_and_form_bodies() {
        let r = rule();
        assert_eq!(
            check_body(
                &r,
                Some("application/json"),
                br#"{"phone":"+86 138 0013 8000","name":"a"}"#
            ),
            Ok(())
        );
        assert_eq!(
            check_body(
                &r,
                Some("application/x-www-form-urlencoded"),
                b"name=a&phone=%2B86+138+0013+8000"
            ),
            Ok(())
        );
        assert_eq!(
            check_body(&r, None, br#"{"phone":"0086 13800138000"}"#),
            Ok(())
        );
        let us = check_body(
            &r,
            Some("application/json"),
            br#"{"phone":"+1 415 555 0100"}"#,
        )
        .unwrap_err();
        assert_eq!(us.status(), 403);
        assert!(us.detail().contains("+86"));
        assert_eq!(
            check_body(&r, Some("application/json"), br#"{"phone":"13800138000"}"#)
                .unwrap_err()
                .status(),
            403
        );
    }

    #[test]
    fn malformed_and_oversized_bodies() {
        let r = rule();
        assert_eq!(
            check_body(&r, Some("application/json"), b"{not json")
                .unwrap_err()
                .status(),
            400
        );
        assert_eq!(
            check_body(&r, Some("application/json"), br#"{"mobile":"+86 1"}"#)
                .unwrap_err()
                .status(),
            400
        );
        assert_eq!(
            check_body(&r, Some("application/json"), br#"{"phone":8613800138000}"#)
                .unwrap_err()
                .status(),
            400
        );
        assert_eq!(
            check_body(&r, Some("application/x-www-form-urlencoded"), b"a=b")
                .unwrap_err()
                .status(),
            400
        );
        let big = vec![b' '; 300];
        assert_eq!(
            check_body(&r, Some("application/json"), &big),
            Err(BodyRefusal::TooLarge { limit: 256 })
        );
    }
}
