//! The canonical request target: one spelling of the path, computed once per
//! request, that Rampart routes on, limits on, logs and forwards. What Rampart
//! matches is what the origin sees.
//!
//! The path is rewritten as RFC 3986 allows without changing what it names:
//! - percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`, §2.3) are
//!   decoded, and the hex digits of every other escape are upper-cased (§6.2.2.1);
//! - dot segments are removed (§5.2.4), also when written `%2e`;
//! - runs of `/` become one `/`.
//!
//! What cannot be made unambiguous is refused (400, `rule = "canonical_path"`),
//! because origins disagree about it: an encoded `/` or `\`, a raw `\`, a NUL or
//! any other control character (raw or encoded), a dot segment that climbs above
//! the root, a malformed escape, escapes that do not decode to UTF-8, and `;` path
//! parameters unless the config allows them. The query string is kept as sent.
//!
//! Methods are tokens written in upper case; `post` is refused rather than
//! guessed at (`rule = "canonical_method"`).

use std::borrow::Cow;

/// Why a request target or method was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CanonicalRefusal {
    /// The path does not start with `/` (or is `*`, or empty in HTTP/2).
    NotAbsolutePath,
    /// `%2F` or `%5C`: origins disagree on whether it separates segments.
    EncodedSlash,
    /// A raw `\`: some origins treat it as `/`.
    Backslash,
    /// A control character, raw or percent-encoded (including `%00`).
    ControlCharacter,
    /// `%` not followed by two hex digits.
    InvalidEscape,
    /// The decoded path is not UTF-8.
    NotUtf8,
    /// A `..` segment that would climb above `/`.
    AboveRoot,
    /// A `;` path parameter (matrix parameters), refused unless allowed.
    PathParameter,
    /// A method token with lower-case letters.
    LowerCaseMethod,
    /// More than one `Host` field, or a `Host` that names another authority than
    /// the target (HTTP/2 `:authority`, HTTP/1.1 absolute form): Rampart would
    /// route on one and the origin on the other.
    AmbiguousHost,
}

impl CanonicalRefusal {
    /// The rule name in problem bodies, metrics and the access log.
    pub fn rule(self) -> &'static str {
        match self {
            CanonicalRefusal::LowerCaseMethod => "canonical_method",
            CanonicalRefusal::AmbiguousHost => "canonical_host",
            _ => "canonical_path",
        }
    }

    /// Human detail for the problem body.
    pub fn detail(self) -> &'static str {
        match self {
            CanonicalRefusal::NotAbsolutePath => "The request path must start with '/'.",
            CanonicalRefusal::EncodedSlash => {
                "The request path contains an encoded '/' or '\\' (%2F, %5C), which origins read differently."
            }
            CanonicalRefusal::Backslash => "The request path contains a '\\'.",
            CanonicalRefusal::ControlCharacter => {
                "The request path contains a control character (raw or percent-encoded)."
            }
            CanonicalRefusal::InvalidEscape => {
                "The request path contains a '%' that is not followed by two hex digits."
            }
            CanonicalRefusal::NotUtf8 => "The decoded request path is not valid UTF-8.",
            CanonicalRefusal::AboveRoot => "The request path climbs above the root with '..'.",
            CanonicalRefusal::PathParameter => {
                "The request path contains a ';' path parameter, which origins read differently."
            }
            CanonicalRefusal::LowerCaseMethod => {
                "The request method must be an upper-case token (e.g. POST)."
            }
            CanonicalRefusal::AmbiguousHost => {
                "The request names its host more than once, or two different hosts."
            }
        }
    }
}

/// How paths are canonicalised.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CanonicalOptions {
    /// Keep `;` in paths as an ordinary character instead of refusing it.
    pub allow_semicolons: bool,
}

/// Refuses a method that is not an upper-case token.
///
/// The HTTP parsers in front of us already refuse non-token bytes; what is left is
/// case, which origins treat differently (most upper-case the method, some do not).
pub fn check_method(method: &str) -> Result<(), CanonicalRefusal> {
    if method.bytes().any(|b| b.is_ascii_lowercase()) {
        Err(CanonicalRefusal::LowerCaseMethod)
    } else {
        Ok(())
    }
}

/// Refuses a request whose host is ambiguous: more than one `Host` field, or a
/// `Host` that differs (ignoring case) from the target's authority.
pub fn check_host<'a>(
    authority: Option<&str>,
    mut hosts: impl Iterator<Item = &'a [u8]>,
) -> Result<(), CanonicalRefusal> {
    let first = hosts.next();
    if hosts.next().is_some() {
        return Err(CanonicalRefusal::AmbiguousHost);
    }
    match (authority, first) {
        (Some(a), Some(h)) if !a.as_bytes().eq_ignore_ascii_case(h) => {
            Err(CanonicalRefusal::AmbiguousHost)
        }
        _ => Ok(()),
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

/// The canonical form of `path` (the path of a request target, without query).
///
/// Borrowed when `path` is already canonical, which is the common case and costs
/// one scan. The result is idempotent: canonicalising it again returns it
/// unchanged, and it never contains `//`, a `.` or `..` segment, or an encoded
/// `/` or `\`.
pub fn canonicalize_path(
    path: &str,
    options: CanonicalOptions,
) -> Result<Cow<'_, str>, CanonicalRefusal> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(CanonicalRefusal::NotAbsolutePath);
    }
    // Pass 1: validate every byte and escape; note whether anything must change.
    let mut needs_rewrite = false;
    let mut decoded_utf8 = Vec::new(); // only filled when escapes decode to non-ASCII
    let mut has_high_escape = false;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let (Some(hi), Some(lo)) = (
                    bytes.get(i + 1).copied().and_then(hex),
                    bytes.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(CanonicalRefusal::InvalidEscape);
                };
                let v = hi << 4 | lo;
                match v {
                    b'/' | b'\\' => return Err(CanonicalRefusal::EncodedSlash),
                    0x00..=0x1f | 0x7f => return Err(CanonicalRefusal::ControlCharacter),
                    b';' if !options.allow_semicolons => {
                        return Err(CanonicalRefusal::PathParameter)
                    }
                    _ => {}
                }
                if v >= 0x80 {
                    has_high_escape = true;
                }
                if is_unreserved(v)
                    || bytes[i + 1].is_ascii_lowercase()
                    || bytes[i + 2].is_ascii_lowercase()
                {
                    needs_rewrite = true;
                }
                i += 3;
                continue;
            }
            b'\\' => return Err(CanonicalRefusal::Backslash),
            0x00..=0x1f | 0x7f => return Err(CanonicalRefusal::ControlCharacter),
            b';' if !options.allow_semicolons => return Err(CanonicalRefusal::PathParameter),
            b'/' => {
                // `//`, `/.` followed by `/` or end, `/..` likewise.
                let rest = &bytes[i + 1..];
                if rest.first() == Some(&b'/')
                    || rest == b"."
                    || rest.starts_with(b"./")
                    || rest == b".."
                    || rest.starts_with(b"../")
                {
                    needs_rewrite = true;
                }
            }
            _ => {}
        }
        i += 1;
    }
    if has_high_escape {
        // Escapes of non-ASCII bytes must decode (together with raw bytes) to
        // UTF-8 without C1 control characters: origins decode them.
        decoded_utf8.reserve(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' {
                // Validated above: two hex digits follow.
                let v = hex(bytes[i + 1]).unwrap_or(0) << 4 | hex(bytes[i + 2]).unwrap_or(0);
                decoded_utf8.push(v);
                i += 3;
            } else {
                decoded_utf8.push(bytes[i]);
                i += 1;
            }
        }
        let text = std::str::from_utf8(&decoded_utf8).map_err(|_| CanonicalRefusal::NotUtf8)?;
        if text.chars().any(char::is_control) {
            return Err(CanonicalRefusal::ControlCharacter);
        }
    } else if path.chars().any(|c| c.is_control()) {
        // Raw non-ASCII in the target (HTTP/2 may carry it): C1 controls too.
        return Err(CanonicalRefusal::ControlCharacter);
    }
    if !needs_rewrite {
        return Ok(Cow::Borrowed(path));
    }
    // Pass 2: decode unreserved escapes and normalise hex case, segment by segment,
    // then remove dot segments and empty segments.
    let mut segments: Vec<String> = Vec::new();
    let trailing_slash;
    {
        let mut parts = path[1..].split('/').peekable();
        let mut last_was_dir = false;
        while let Some(raw) = parts.next() {
            let is_last = parts.peek().is_none();
            let mut seg = String::with_capacity(raw.len());
            let rb = raw.as_bytes();
            let mut j = 0;
            while j < rb.len() {
                if rb[j] == b'%' {
                    let v = hex(rb[j + 1]).unwrap_or(0) << 4 | hex(rb[j + 2]).unwrap_or(0);
                    if is_unreserved(v) {
                        seg.push(char::from(v));
                    } else {
                        seg.push('%');
                        seg.push(char::from(HEX_UPPER[usize::from(v >> 4)]));
                        seg.push(char::from(HEX_UPPER[usize::from(v & 15)]));
                    }
                    j += 3;
                } else {
                    // Copy the run up to the next escape (keeps multi-byte UTF-8 whole).
                    let end = rb[j..]
                        .iter()
                        .position(|&c| c == b'%')
                        .map_or(rb.len(), |p| j + p);
                    seg.push_str(&raw[j..end]);
                    j = end;
                }
            }
            match seg.as_str() {
                "" => last_was_dir = true,
                "." => last_was_dir = true,
                ".." => {
                    if segments.pop().is_none() {
                        return Err(CanonicalRefusal::AboveRoot);
                    }
                    last_was_dir = true;
                }
                _ => {
                    segments.push(seg);
                    last_was_dir = false;
                }
            }
            if is_last {
                break;
            }
        }
        trailing_slash = last_was_dir;
    }
    let mut out = String::with_capacity(path.len());
    for seg in &segments {
        out.push('/');
        out.push_str(seg);
    }
    if trailing_slash || segments.is_empty() {
        out.push('/');
    }
    Ok(Cow::Owned(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(p: &str) -> Result<String, CanonicalRefusal> {
        canonicalize_path(p, CanonicalOptions::default()).map(Cow::into_owned)
    }

    #[test]
    fn canonical_paths_are_borrowed() {
        for p in [
            "/",
            "/api/auth/register",
            "/a/b/",
            "/caf%C3%A9",
            "/a%20b",
            "/a.b/..c/...",
            "/%25",
        ] {
            assert!(
                matches!(
                    canonicalize_path(p, CanonicalOptions::default()),
                    Ok(Cow::Borrowed(_))
                ),
                "{p}"
            );
        }
    }

    #[test]
    fn spellings_of_one_path_become_one() {
        let want = "/api/auth/register";
        for p in [
            "/api/auth/%72egister",
            "/api/auth/./register",
            "/api/auth//register",
            "//api///auth/register",
            "/api/auth/x/../register",
            "/api/auth/%2e/register",
            "/api/auth/%2E%2e/auth/register",
            "/api/x/%2e%2e/auth/register",
            "/%61pi/auth/register",
            "/api/auth/register/.",
        ] {
            let got = canon(p).unwrap();
            assert!(got == want || got == "/api/auth/register/", "{p} -> {got}");
        }
        assert_eq!(canon("/a/b/..").unwrap(), "/a/");
        assert_eq!(canon("/a/b/.").unwrap(), "/a/b/");
        assert_eq!(canon("/a/..").unwrap(), "/");
        assert_eq!(canon("/.").unwrap(), "/");
        assert_eq!(canon("/a%c3%a9").unwrap(), "/a%C3%A9");
        assert_eq!(canon("/%7euser/%2d").unwrap(), "/~user/-");
        assert_eq!(canon("/a/%2e%2e%2e").unwrap(), "/a/...");
        assert_eq!(canon("/%25%32%65").unwrap(), "/%252e");
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        use CanonicalRefusal::*;
        for (p, why) in [
            ("/api%2fauth", EncodedSlash),
            ("/api%2Fauth", EncodedSlash),
            ("/api%5cauth", EncodedSlash),
            ("/api\\auth", Backslash),
            ("/a%00b", ControlCharacter),
            ("/a%0ab", ControlCharacter),
            ("/a%7f", ControlCharacter),
            ("/a%C2%85", ControlCharacter),
            ("/a\tb", ControlCharacter),
            ("/a%zz", InvalidEscape),
            ("/a%4", InvalidEscape),
            ("/a%", InvalidEscape),
            ("/a%C3%28", NotUtf8),
            ("/a%ff", NotUtf8),
            ("/..", AboveRoot),
            ("/a/../..", AboveRoot),
            ("/%2e%2e/etc", AboveRoot),
            ("/api/auth/register;x=1", PathParameter),
            ("/api/auth/register%3b", PathParameter),
            ("*", NotAbsolutePath),
            ("", NotAbsolutePath),
            ("api", NotAbsolutePath),
        ] {
            assert_eq!(canon(p), Err(why), "{p}");
        }
        let allow = CanonicalOptions {
            allow_semicolons: true,
        };
        assert_eq!(canonicalize_path("/a;b=1/./c", allow).unwrap(), "/a;b=1/c");
    }

    #[test]
    fn idempotent_on_samples() {
        for p in [
            "/a//b/./c/../d%7e%41%2e",
            "/%2e%2e%2e/x/",
            "/x/%2E",
            "/a/b/c/../../",
            "/%c3%a9/%20",
        ] {
            let once = canon(p).unwrap();
            assert_eq!(canon(&once).unwrap(), once, "{p}");
        }
    }

    #[test]
    fn hosts_must_be_one() {
        let one = [&b"api.example.com"[..]];
        assert!(check_host(None, one.into_iter()).is_ok());
        assert!(check_host(Some("API.example.com"), one.into_iter()).is_ok());
        assert!(check_host(Some("api.example.com"), std::iter::empty()).is_ok());
        assert_eq!(
            check_host(Some("admin.example.com"), one.into_iter()),
            Err(CanonicalRefusal::AmbiguousHost)
        );
        let two = [&b"a"[..], &b"a"[..]];
        assert_eq!(
            check_host(None, two.into_iter()),
            Err(CanonicalRefusal::AmbiguousHost)
        );
    }

    #[test]
    fn methods_must_be_upper_case() {
        assert!(check_method("POST").is_ok());
        assert!(check_method("M-SEARCH").is_ok());
        assert_eq!(check_method("post"), Err(CanonicalRefusal::LowerCaseMethod));
        assert_eq!(check_method("Post"), Err(CanonicalRefusal::LowerCaseMethod));
    }
}
