//! Body rules: a phone number in a JSON or form body must be a valid number of
//! an allowed region, calling code and type ("new registrations only for
//! mainland-China mobile numbers").
//!
//! The body is read the way origins read it, or refused: what Rampart checks must
//! be the one value the origin will act on.
//! - Only `application/json` (and `+json` types) and
//!   `application/x-www-form-urlencoded` bodies are read, matched as exact media
//!   types (parameters allowed; a `charset` must be UTF-8); anything else is 415.
//!   Two `Content-Type` fields are 400; a `Content-Encoding` other than
//!   `identity` is 415.
//! - The field present more than once is 400: repeated form keys (first-wins and
//!   last-wins parsers disagree), `phone[]`-style keys, duplicate JSON keys on the
//!   field's path, and case variants (`Phone`). A case variant or bracketed key
//!   alone is 400 too: some origins would read it as the field. The field in the
//!   query string as well is 400 (frameworks merge query and form).
//! - A form body that is also a JSON object is 400 (an origin that sniffs the
//!   body would read the other half).
//! - Numbers are parsed and validated by the `phonenumber` crate (libphonenumber
//!   metadata). Before that, only digits, a leading `+` (or `00`), spaces, `-`,
//!   `.` and parentheses are accepted: no letters, no extensions.

use http::HeaderMap;
use rampart_config::{BodyKeyConfig, BodyKeyNormalize, BodyRuleConfig, PhoneType};
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use std::fmt;

/// Why a body was refused; becomes a 400, 403, 413 or 415 problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyRefusal {
    /// Larger than the rule reads (413).
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// A media type or content coding the rule does not read (415).
    UnsupportedMediaType(String),
    /// Not parseable, ambiguous, or the field is missing or not a string (400).
    Malformed(String),
    /// The number is not allowed (403).
    NotAllowed(String),
}

impl BodyRefusal {
    /// HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            BodyRefusal::TooLarge { .. } => 413,
            BodyRefusal::UnsupportedMediaType(_) => 415,
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
            BodyRefusal::UnsupportedMediaType(why)
            | BodyRefusal::Malformed(why)
            | BodyRefusal::NotAllowed(why) => why.clone(),
        }
    }
}

/// What a body rule reads of one request.
#[derive(Debug, Clone, Copy)]
pub struct BodyInput<'a> {
    /// Request headers (`Content-Type`, `Content-Encoding`).
    pub headers: &'a HeaderMap,
    /// The raw query string, if any.
    pub query: Option<&'a str>,
    /// The body as received (possibly cut just past the rule's limit).
    pub body: &'a [u8],
}

/// Which parser a body needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyKind {
    Json,
    Form,
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// The body kind of a `Content-Type` value, strictly: `type/subtype` tokens and
/// `name=value` parameters, where a `charset` must be UTF-8.
fn media_kind(value: &[u8]) -> Result<BodyKind, BodyRefusal> {
    let unsupported = || {
        BodyRefusal::UnsupportedMediaType(
            "The body must be application/json or application/x-www-form-urlencoded (UTF-8)."
                .into(),
        )
    };
    let text = std::str::from_utf8(value).map_err(|_| unsupported())?;
    let mut parts = text.split(';');
    let essence = parts.next().unwrap_or("").trim().to_ascii_lowercase();
    let Some((ty, sub)) = essence.split_once('/') else {
        return Err(unsupported());
    };
    if !is_token(ty) || !is_token(sub) {
        return Err(unsupported());
    }
    let kind = match (ty, sub) {
        ("application", "json") => BodyKind::Json,
        ("application", s) if s.ends_with("+json") && s.len() > 5 => BodyKind::Json,
        ("application", "x-www-form-urlencoded") => BodyKind::Form,
        _ => return Err(unsupported()),
    };
    for param in parts {
        let Some((name, val)) = param.split_once('=') else {
            return Err(unsupported());
        };
        let name = name.trim().to_ascii_lowercase();
        let val = val.trim();
        let val = match val.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
            Some(quoted) if !quoted.contains(['"', '\\']) => quoted,
            Some(_) => return Err(unsupported()),
            None if is_token(val) => val,
            None => return Err(unsupported()),
        };
        if !is_token(&name) {
            return Err(unsupported());
        }
        if name == "charset" && !val.eq_ignore_ascii_case("utf-8") {
            return Err(unsupported());
        }
    }
    Ok(kind)
}

/// Decodes `application/x-www-form-urlencoded` text: `+` is a space, `%XX` a byte,
/// a malformed escape stays as written (as WHATWG URLSearchParams and Werkzeug do).
/// `None` when the bytes do not decode to UTF-8.
pub fn form_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = |b: u8| (b as char).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// How a key relates to the field name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyMatch {
    No,
    Exact,
    /// A spelling some origin may read as the field: other case, `phone[]`, `phone[x]`.
    Variant,
}

fn key_match(key: &str, field: &str, brackets: bool) -> KeyMatch {
    if key == field {
        return KeyMatch::Exact;
    }
    // Spellings some parser reads as the field: ASCII and Unicode case folding
    // (Go's encoding/json matches `uſername` to `Username`), compatibility forms
    // (fullwidth letters), and in forms what PHP does to names (leading spaces
    // dropped, cut at a NUL, `phone[...]`).
    let loose = |k: &str| {
        let k = if brackets {
            let k = k.trim_start_matches([' ', '\t', '\n', '\r', '\x0b', '\x0c']);
            k.split('\0').next().unwrap_or(k)
        } else {
            k
        };
        fold(k)
    };
    // Folding can turn non-ASCII into ASCII, never the reverse: an ASCII key
    // against an ASCII field needs no allocation.
    if key.is_ascii() && field.is_ascii() {
        let k = if brackets {
            let k = key.trim_start_matches([' ', '\t', '\n', '\r', '\x0b', '\x0c']);
            k.split('\0').next().unwrap_or(k)
        } else {
            key
        };
        if k.eq_ignore_ascii_case(field) {
            return KeyMatch::Variant;
        }
        let bracketed = brackets
            && k.len() > field.len()
            && k.as_bytes()[..field.len()].eq_ignore_ascii_case(field.as_bytes())
            && k.as_bytes()[field.len()] == b'[';
        return if bracketed {
            KeyMatch::Variant
        } else {
            KeyMatch::No
        };
    }
    let key_folded = loose(key);
    let field_folded = fold(field);
    if key_folded == field_folded {
        return KeyMatch::Variant;
    }
    if brackets
        && key_folded.len() > field_folded.len()
        && key_folded.starts_with(field_folded.as_str())
        && key_folded[field_folded.len()..].starts_with('[')
    {
        return KeyMatch::Variant;
    }
    KeyMatch::No
}

/// A name as loose parsers compare it: NFKC, then upper and lower case folded
/// both ways (so `ſ`, `K` and fullwidth letters meet their ASCII forms), with
/// invisible format characters dropped.
fn fold(name: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    if name.is_ascii() {
        // NFKC leaves ASCII alone, and ASCII folds to ASCII.
        return name.to_ascii_lowercase();
    }
    name.nfkc()
        .filter(|c| !is_invisible(*c))
        .collect::<String>()
        .to_uppercase()
        .to_lowercase()
}

/// Zero-width and other format characters that render as nothing.
fn is_invisible(c: char) -> bool {
    matches!(c, '\u{00ad}' | '\u{034f}' | '\u{061c}' | '\u{115f}' | '\u{1160}' | '\u{17b4}' | '\u{17b5}'
        | '\u{180b}'..='\u{180f}' | '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}'
        | '\u{2060}'..='\u{206f}' | '\u{3164}' | '\u{fe00}'..='\u{fe0f}' | '\u{feff}' | '\u{ffa0}')
}

/// Keys of a form-encoded string, decoded; `None` when one is not UTF-8.
fn form_pairs(text: &str) -> Option<Vec<(String, String)>> {
    text.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Some((form_decode(k)?, form_decode(v)?))
        })
        .collect()
}

/// A JSON value that keeps duplicate object keys, so that they can be refused.
#[derive(Debug)]
enum Json {
    Str(String),
    Obj(Vec<(String, Json)>),
    Other,
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Json;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("JSON")
            }
            fn visit_bool<E>(self, _: bool) -> Result<Json, E> {
                Ok(Json::Other)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Json, E> {
                Ok(Json::Other)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Json, E> {
                Ok(Json::Other)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Json, E> {
                Ok(Json::Other)
            }
            fn visit_str<E>(self, s: &str) -> Result<Json, E> {
                Ok(Json::Str(s.to_string()))
            }
            fn visit_string<E>(self, s: String) -> Result<Json, E> {
                Ok(Json::Str(s))
            }
            fn visit_unit<E>(self) -> Result<Json, E> {
                Ok(Json::Other)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(Json::Other)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
                let mut out = Vec::new();
                while let Some(k) = map.next_key::<String>()? {
                    out.push((k, map.next_value::<Json>()?));
                }
                Ok(Json::Obj(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// The names the field goes by in a query string: the pointer's first and last
/// segments (frameworks that merge query and body read either).
fn query_names(pointer: &[String]) -> impl Iterator<Item = &str> {
    pointer
        .first()
        .into_iter()
        .chain(pointer.last().filter(|_| pointer.len() > 1))
        .map(String::as_str)
}

/// The one value of the field (`field` as written, `pointer` its path) in
/// `input`, or why it cannot be read unambiguously.
fn field_value(
    field: &str,
    pointer: &[String],
    input: &BodyInput<'_>,
) -> Result<String, BodyRefusal> {
    let malformed = |why: String| Err(BodyRefusal::Malformed(why));
    let mut types = input.headers.get_all(http::header::CONTENT_TYPE).iter();
    let kind = match (types.next(), types.next()) {
        (None, _) => {
            return Err(BodyRefusal::UnsupportedMediaType(
                "The body must be application/json or application/x-www-form-urlencoded; no Content-Type was sent.".into(),
            ))
        }
        (Some(_), Some(_)) => return malformed("The request has more than one Content-Type.".into()),
        (Some(ct), None) => media_kind(ct.as_bytes())?,
    };
    for coding in input.headers.get_all(http::header::CONTENT_ENCODING) {
        let identity = coding.to_str().is_ok_and(|c| {
            c.split(',')
                .all(|c| c.trim().eq_ignore_ascii_case("identity"))
        });
        if !identity {
            return Err(BodyRefusal::UnsupportedMediaType(
                "Compressed request bodies are not accepted here.".into(),
            ));
        }
    }
    if let Some(query) = input.query {
        // Some parsers (Rack 2, older Pythons) split a query on `;` as well.
        let query = query.replace(';', "&");
        let pairs = form_pairs(&query)
            .ok_or_else(|| BodyRefusal::Malformed("The query string is not valid UTF-8.".into()))?;
        for name in query_names(pointer) {
            if pairs
                .iter()
                .any(|(k, _)| key_match(k, name, true) != KeyMatch::No)
            {
                return malformed(format!(
                    "\"{name}\" must be sent in the body only, not in the query string."
                ));
            }
        }
    }
    match kind {
        BodyKind::Form => {
            let [name] = pointer else {
                return Err(BodyRefusal::UnsupportedMediaType(format!(
                    "\"{field}\" is read from JSON bodies only."
                )));
            };
            if body_is_json_object(input.body) {
                return malformed("The form body looks like JSON; send one or the other.".into());
            }
            let text = std::str::from_utf8(input.body)
                .map_err(|_| BodyRefusal::Malformed("The form body is not valid UTF-8.".into()))?;
            let pairs = form_pairs(text).ok_or_else(|| {
                BodyRefusal::Malformed("The form body does not decode to UTF-8.".into())
            })?;
            one_value(
                pairs
                    .into_iter()
                    .map(|(k, v)| (key_match(&k, name, true), Json::Str(v))),
                field,
            )
            .map_err(BodyRefusal::from)
        }
        BodyKind::Json => {
            let value: Json = serde_json::from_slice(input.body)
                .map_err(|e| BodyRefusal::Malformed(format!("The body is not valid JSON: {e}.")))?;
            let mut current = value;
            for (depth, segment) in pointer.iter().enumerate() {
                let Json::Obj(members) = current else {
                    return malformed(format!("The body has no \"{field}\" field."));
                };
                let last = depth + 1 == pointer.len();
                let found = one_value(
                    members
                        .into_iter()
                        .map(|(k, v)| (key_match(&k, segment, false), v)),
                    field,
                );
                current = match found {
                    Ok(s) => {
                        return if last {
                            Ok(s)
                        } else {
                            malformed(format!("The body has no \"{field}\" field."))
                        }
                    }
                    Err(FieldError::Object(v)) if !last => v,
                    Err(FieldError::Object(_)) | Err(FieldError::NotString) => {
                        return malformed(format!("The \"{field}\" field must be a string."))
                    }
                    Err(FieldError::Refused(r)) => return Err(r),
                };
            }
            malformed(format!("The body has no \"{field}\" field."))
        }
    }
}

enum FieldError {
    Object(Json),
    NotString,
    Refused(BodyRefusal),
}

impl From<FieldError> for BodyRefusal {
    fn from(e: FieldError) -> Self {
        match e {
            FieldError::Refused(r) => r,
            _ => BodyRefusal::Malformed("The field has an unexpected type.".into()),
        }
    }
}

/// The single exactly-named member among `members`; refuses duplicates and variants.
fn one_value(
    members: impl Iterator<Item = (KeyMatch, Json)>,
    field: &str,
) -> Result<String, FieldError> {
    let mut found = None;
    for (m, v) in members {
        match m {
            KeyMatch::No => {}
            KeyMatch::Variant => {
                return Err(FieldError::Refused(BodyRefusal::Malformed(format!(
                    "The body spells \"{field}\" in another way (case or brackets); send it exactly once, as \"{field}\"."
                ))))
            }
            KeyMatch::Exact if found.is_some() => {
                return Err(FieldError::Refused(BodyRefusal::Malformed(format!(
                    "\"{field}\" appears more than once in the body."
                ))))
            }
            KeyMatch::Exact => found = Some(v),
        }
    }
    match found {
        None => Err(FieldError::Refused(BodyRefusal::Malformed(format!(
            "The body has no \"{field}\" field."
        )))),
        Some(Json::Str(s)) => Ok(s),
        Some(obj @ Json::Obj(_)) => Err(FieldError::Object(obj)),
        Some(Json::Other) => Err(FieldError::NotString),
    }
}

/// Whether a form body looks like JSON to a parser that does not look at the
/// Content-Type: it opens (after a byte-order mark and white space) with `{` or
/// `[`. No form a browser or client library writes starts that way, and a
/// lenient JSON decoder (Go's, Jackson's) reads such a body up to the end of its
/// first value and ignores the rest.
fn body_is_json_object(body: &[u8]) -> bool {
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    let start = body.iter().position(|b| !b.is_ascii_whitespace());
    start.is_some_and(|s| matches!(body[s], b'{' | b'['))
}

/// The digits of an international number (`+` and digits), or `None` when `raw`
/// holds anything but digits, one leading `+` or `00`, spaces, `-`, `.` and
/// parentheses.
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
        Some(rest) => format!("+{rest}"),
        None => out,
    };
    let digits = out.strip_prefix('+')?;
    ((4..=17).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit())).then_some(out)
}

/// Loads the phone number metadata now, so that the first request does not pay
/// for it.
pub fn warm_up() {
    let _ = phonenumber::parse(None, "+8613800138000");
}

fn type_allowed(wanted: PhoneType, got: phonenumber::Type) -> bool {
    use phonenumber::Type as T;
    match wanted {
        PhoneType::Mobile => matches!(got, T::Mobile | T::FixedLineOrMobile),
        PhoneType::FixedLine => matches!(got, T::FixedLine | T::FixedLineOrMobile),
        PhoneType::TollFree => got == T::TollFree,
        PhoneType::PremiumRate => got == T::PremiumRate,
        PhoneType::SharedCost => got == T::SharedCost,
        PhoneType::Voip => got == T::Voip,
        PhoneType::PersonalNumber => got == T::PersonalNumber,
        PhoneType::Pager => got == T::Pager,
        PhoneType::Uan => got == T::Uan,
        PhoneType::Voicemail => got == T::Voicemail,
    }
}

/// Whether `raw` is a number `rule` accepts.
///
/// Cheap refusals first: the calling code is compared with the allowed codes and
/// with those of the allowed regions before libphonenumber classifies the
/// number (the costly part: its patterns). A number is valid when its type is
/// known, which is libphonenumber's own definition of `is_valid`; the type is
/// computed once.
pub fn phone_allowed(rule: &BodyRuleConfig, raw: &str) -> bool {
    let Some(e164) = normalize_phone(raw) else {
        return false;
    };
    let Ok(number) = phonenumber::parse(None, &e164) else {
        return false;
    };
    let db = &*phonenumber::metadata::DATABASE;
    let code = number.code().value();
    if !rule.allowed_calling_codes.is_empty()
        && !rule
            .allowed_calling_codes
            .iter()
            .any(|c| c.parse::<u16>().is_ok_and(|c| c == code))
    {
        return false;
    }
    if !rule.allowed_regions.is_empty()
        && !rule.allowed_regions.iter().any(|r| {
            db.by_id(r.as_str())
                .is_some_and(|m| m.country_code() == code)
        })
    {
        return false;
    }
    let Some(meta) = number.metadata(db) else {
        return false;
    };
    if !rule.allowed_regions.is_empty() && !rule.allowed_regions.iter().any(|r| r == meta.id()) {
        return false;
    }
    let kind = number_type(meta, &number.national().value().to_string());
    if kind == phonenumber::Type::Unknown {
        return false;
    }
    rule.number_types.is_empty() || rule.number_types.iter().any(|&t| type_allowed(t, kind))
}

/// One type's national number pattern, compiled once (see [`number_type`]).
#[derive(Debug)]
struct Pattern {
    lengths: Vec<u16>,
    regex: regex::Regex,
}

impl Pattern {
    fn new(d: &phonenumber::metadata::Descriptor) -> Option<Self> {
        Some(Pattern {
            lengths: d.possible_length().to_vec(),
            // As the crate's loader compiles them.
            // Anchored at the start: "a match starting at 0" is then a plain
            // is_match, which stops at the first accepting state.
            regex: regex::RegexBuilder::new(&format!("^(?:{})", d.national_number().as_str()))
                .ignore_whitespace(true)
                .build()
                .ok()?,
        })
    }

    /// libphonenumber's `Descriptor::is_match`: a possible length, and the
    /// pattern found at the start.
    fn is_match(&self, value: &str) -> bool {
        (self.lengths.is_empty() || self.lengths.contains(&(value.len() as u16)))
            && self.regex.is_match(value)
    }
}

/// The patterns of one region, in the order libphonenumber tries them.
#[derive(Debug)]
struct Classifier {
    general: Option<Pattern>,
    /// Premium rate, toll free, shared cost, VoIP, personal, pager, UAN,
    /// voicemail: the first that matches decides.
    exclusive: Vec<(phonenumber::Type, Pattern)>,
    fixed_line: Option<Pattern>,
    mobile: Option<Pattern>,
    fixed_line_is_mobile: bool,
}

impl Classifier {
    fn new(meta: &phonenumber::metadata::Metadata) -> Self {
        use phonenumber::Type as T;
        let d = meta.descriptors();
        let exclusive = [
            (T::PremiumRate, d.premium_rate()),
            (T::TollFree, d.toll_free()),
            (T::SharedCost, d.shared_cost()),
            (T::Voip, d.voip()),
            (T::PersonalNumber, d.personal_number()),
            (T::Pager, d.pager()),
            (T::Uan, d.uan()),
            (T::Voicemail, d.get(T::Voicemail)),
        ]
        .into_iter()
        .filter_map(|(t, d)| Some((t, Pattern::new(d?)?)))
        .collect();
        Classifier {
            general: Pattern::new(d.general()),
            exclusive,
            fixed_line: d.fixed_line().and_then(Pattern::new),
            mobile: d.mobile().and_then(Pattern::new),
            fixed_line_is_mobile: d.fixed_line().map(|d| d.national_number().as_str())
                == d.mobile().map(|d| d.national_number().as_str()),
        }
    }

    fn number_type(&self, value: &str) -> phonenumber::Type {
        use phonenumber::Type as T;
        if !self.general.as_ref().is_some_and(|p| p.is_match(value)) {
            return T::Unknown;
        }
        if let Some((t, _)) = self.exclusive.iter().find(|(_, p)| p.is_match(value)) {
            return *t;
        }
        if self.fixed_line.as_ref().is_some_and(|p| p.is_match(value)) {
            if self.fixed_line_is_mobile || self.mobile.as_ref().is_some_and(|p| p.is_match(value))
            {
                return T::FixedLineOrMobile;
            }
            return T::FixedLine;
        }
        if self.mobile.as_ref().is_some_and(|p| p.is_match(value)) {
            return T::Mobile;
        }
        T::Unknown
    }
}

/// The type of national number `value` in region `meta`: exactly
/// libphonenumber's `number_type`, with each region's patterns compiled once
/// here. The crate looks every pattern up in a shared, locked LRU cache of 100
/// regexes keyed by their source text on every call (and recompiles the ones
/// it evicted), which made a body rule's check cost about 90 000 instructions,
/// twice a whole proxied request.
fn number_type(meta: &phonenumber::metadata::Metadata, value: &str) -> phonenumber::Type {
    use std::collections::HashMap;
    use std::sync::{Arc, OnceLock, RwLock};
    static CLASSIFIERS: OnceLock<RwLock<HashMap<String, Arc<Classifier>>>> = OnceLock::new();
    let all = CLASSIFIERS.get_or_init(Default::default);
    let found = all.read().ok().and_then(|m| m.get(meta.id()).cloned());
    let classifier = match found {
        Some(c) => c,
        None => {
            let c = Arc::new(Classifier::new(meta));
            if let Ok(mut m) = all.write() {
                m.insert(meta.id().to_string(), c.clone());
            }
            c
        }
    };
    classifier.number_type(value)
}

/// What `rule` accepts, for refusal messages: "mobile numbers from CN".
fn accepted(rule: &BodyRuleConfig) -> String {
    let types = if rule.number_types.is_empty() {
        "phone numbers".to_string()
    } else {
        let names: Vec<&str> = rule.number_types.iter().map(|t| t.as_str()).collect();
        format!("{} numbers", names.join(" or ").replace('_', " "))
    };
    let mut from = Vec::new();
    if !rule.allowed_regions.is_empty() {
        from.push(format!("from {}", rule.allowed_regions.join(", ")));
    }
    if !rule.allowed_calling_codes.is_empty() {
        let codes: Vec<String> = rule
            .allowed_calling_codes
            .iter()
            .map(|c| format!("+{c}"))
            .collect();
        from.push(format!("with calling code {}", codes.join(", ")));
    }
    format!("{types} {}", from.join(" "))
}

/// Checks one request body against `rule`.
pub fn check_body(rule: &BodyRuleConfig, input: &BodyInput<'_>) -> Result<(), BodyRefusal> {
    check_read(rule, input.body.len(), || {
        field_value(&rule.field, &rule.pointer, input)
    })
}

/// Checks a recorded body against `rule` (replay): as [`check_body`], with the
/// field read as the recording remembers it.
pub fn check_recorded(rule: &BodyRuleConfig, body: &RecordedBody) -> Result<(), BodyRefusal> {
    check_read(rule, body.len, || body.field(&rule.field, &rule.pointer))
}

fn check_read(
    rule: &BodyRuleConfig,
    len: usize,
    read: impl FnOnce() -> Result<String, BodyRefusal>,
) -> Result<(), BodyRefusal> {
    if len > rule.max_body_bytes {
        return Err(BodyRefusal::TooLarge {
            limit: rule.max_body_bytes,
        });
    }
    let raw = read()?;
    if phone_allowed(rule, &raw) {
        Ok(())
    } else {
        Err(BodyRefusal::NotAllowed(format!(
            "\"{}\" must be a valid international number; this service currently accepts only {}.",
            rule.field,
            accepted(rule)
        )))
    }
}

/// The value of the rule's field as the origin will read it, or why it cannot be
/// read unambiguously (for tests and explain).
pub fn read_field(rule: &BodyRuleConfig, input: &BodyInput<'_>) -> Result<String, BodyRefusal> {
    field_value(&rule.field, &rule.pointer, input)
}

/// The normalised value a `key = "body"` limit counts by, read from the body
/// exactly as body rules read it (or refused the same way). Account names are
/// trimmed and case-folded; phone numbers written in E.164 (`+8613800138000`),
/// cut to their first `number_prefix` digits when set. The caller hashes it:
/// the value itself is never stored.
pub fn body_key_value(spec: &BodyKeyConfig, input: &BodyInput<'_>) -> Result<String, BodyRefusal> {
    key_read(spec, input.body.len(), || {
        field_value(&spec.field, &spec.pointer, input)
    })
}

/// [`body_key_value`] of a recorded body (replay).
pub fn body_key_recorded(spec: &BodyKeyConfig, body: &RecordedBody) -> Result<String, BodyRefusal> {
    key_read(spec, body.len, || body.field(&spec.field, &spec.pointer))
}

fn key_read(
    spec: &BodyKeyConfig,
    len: usize,
    read: impl FnOnce() -> Result<String, BodyRefusal>,
) -> Result<String, BodyRefusal> {
    if len > spec.max_body_bytes {
        return Err(BodyRefusal::TooLarge {
            limit: spec.max_body_bytes,
        });
    }
    let raw = read()?;
    match spec.normalize {
        BodyKeyNormalize::Account => {
            // What a permissive origin would treat as the same account: NFKC
            // (Django's username field), case folded, invisible characters gone.
            let value = fold(raw.trim());
            let value = value.trim().to_string();
            if value.is_empty() {
                return Err(BodyRefusal::Malformed(format!(
                    "\"{}\" is empty.",
                    spec.field
                )));
            }
            Ok(value)
        }
        BodyKeyNormalize::Phone => {
            let number = normalize_phone(&raw)
                .and_then(|e164| phonenumber::parse(None, &e164).ok())
                .ok_or_else(|| {
                    BodyRefusal::Malformed(format!(
                        "\"{}\" is not an international phone number.",
                        spec.field
                    ))
                })?;
            let e164 = number.format().mode(phonenumber::Mode::E164).to_string();
            let digits = e164.trim_start_matches('+');
            let keep = spec
                .number_prefix
                .map_or(digits.len(), |n| usize::from(n).min(digits.len()));
            Ok(format!("+{}", &digits[..keep]))
        }
    }
}

/// A request body as a recording keeps it (`rampart replay`): its length and,
/// for every field the recording config's rules read, the value as the origin
/// would read it or the status and reason it could not be read. Nothing else of
/// the body is kept.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RecordedBody {
    /// Bytes read (one more than the largest limit when the body was longer).
    pub len: usize,
    /// Field values, by JSON Pointer (`/phone`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub fields: std::collections::BTreeMap<String, String>,
    /// Fields that could not be read: status (400 or 415) and reason.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub refused: std::collections::BTreeMap<String, (u16, String)>,
}

/// How the refusal of a field a recording did not read ends.
pub const NOT_RECORDED: &str = "is not in the recording.";

/// A field's path written as a JSON Pointer (`/user/phone`), the key of a
/// [`RecordedBody`].
pub fn pointer_text(pointer: &[String]) -> String {
    let mut out = String::new();
    for segment in pointer {
        out.push('/');
        out.push_str(&segment.replace('~', "~0").replace('/', "~1"));
    }
    out
}

impl RecordedBody {
    /// Reads every field in `pointers` (field as written, path) from `input`.
    pub fn read<'p>(
        pointers: impl IntoIterator<Item = (&'p str, &'p [String])>,
        input: &BodyInput<'_>,
    ) -> Self {
        let mut out = RecordedBody {
            len: input.body.len(),
            ..RecordedBody::default()
        };
        for (field, pointer) in pointers {
            let key = pointer_text(pointer);
            if out.fields.contains_key(&key) || out.refused.contains_key(&key) {
                continue;
            }
            match field_value(field, pointer, input) {
                Ok(value) => {
                    out.fields.insert(key, value);
                }
                Err(refusal) => {
                    out.refused
                        .insert(key, (refusal.status(), refusal.detail()));
                }
            }
        }
        out
    }

    /// The field as recorded; a field the recording did not read counts as
    /// unreadable (400), since its value is unknown.
    pub fn field(&self, field: &str, pointer: &[String]) -> Result<String, BodyRefusal> {
        let key = pointer_text(pointer);
        if let Some(value) = self.fields.get(&key) {
            return Ok(value.clone());
        }
        match self.refused.get(&key) {
            Some((415, why)) => Err(BodyRefusal::UnsupportedMediaType(why.clone())),
            Some((_, why)) => Err(BodyRefusal::Malformed(why.clone())),
            None => Err(BodyRefusal::Malformed(format!(
                "\"{field}\" {NOT_RECORDED}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule() -> BodyRuleConfig {
        BodyRuleConfig {
            route: 0,
            field: "phone".into(),
            pointer: vec!["phone".into()],
            allowed_calling_codes: vec![],
            allowed_regions: vec!["CN".into()],
            number_types: vec![PhoneType::Mobile],
            methods: vec![],
            max_body_bytes: 256,
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    fn check(ct: &str, body: &str) -> Result<(), BodyRefusal> {
        check_with(&rule(), &headers(&[("content-type", ct)]), None, body)
    }

    fn check_with(
        r: &BodyRuleConfig,
        h: &HeaderMap,
        query: Option<&str>,
        body: &str,
    ) -> Result<(), BodyRefusal> {
        check_body(
            r,
            &BodyInput {
                headers: h,
                query,
                body: body.as_bytes(),
            },
        )
    }

    fn status(r: Result<(), BodyRefusal>) -> u16 {
        r.err().map_or(200, |e| e.status())
    }

    const JSON: &str = "application/json";
    const FORM: &str = "application/x-www-form-urlencoded";

    #[test]
    fn mainland_china_mobile_numbers_only() {
        assert_eq!(check(JSON, r#"{"phone":"+86 138 0013 8000"}"#), Ok(()));
        assert_eq!(check(JSON, r#"{"phone":"0086 (138) 0013.8000"}"#), Ok(()));
        assert_eq!(check(FORM, "phone=%2B86+138+0013+8000&name=a"), Ok(()));
        for refused in [
            "+861234",
            "+8600000000",
            "+852 9123 4567",
            "+1 415 555 0100",
            "+86 10 6552 9988", // Beijing fixed line
            "13800138000",      // no calling code
            "+86 138 0013 8000 ext 12",
            "+86 138 x 0013",
            "+8+6123456",
            "",
        ] {
            let r = check(JSON, &format!(r#"{{"phone":"{refused}"}}"#));
            assert_eq!(status(r.clone()), 403, "{refused}: {r:?}");
        }
        let detail = check(JSON, r#"{"phone":"+1 415 555 0100"}"#)
            .unwrap_err()
            .detail();
        assert!(detail.contains("mobile numbers from CN"), "{detail}");
    }

    #[test]
    fn calling_codes_still_work() {
        let mut r = rule();
        r.allowed_regions.clear();
        r.number_types.clear();
        r.allowed_calling_codes = vec!["1".into()];
        let h = headers(&[("content-type", JSON)]);
        assert_eq!(
            check_with(&r, &h, None, r#"{"phone":"+1 415 555 0100"}"#).err(),
            None
        );
        assert_eq!(
            status(check_with(&r, &h, None, r#"{"phone":"+86 138 0013 8000"}"#)),
            403
        );
    }

    #[test]
    fn media_types_are_matched_exactly() {
        let ok = r#"{"phone":"+8613800138000"}"#;
        assert_eq!(check("application/json; charset=utf-8", ok), Ok(()));
        assert_eq!(check("Application/JSON", ok), Ok(()));
        assert_eq!(check("application/vnd.api+json", ok), Ok(()));
        assert_eq!(check("application/json;charset=\"UTF-8\"", ok), Ok(()));
        for ct in [
            "text/plain",
            "application/jsonx",
            "application/json-patch",
            "text/json",
            "application/json; charset=latin1",
            "application/json, text/plain",
            "application/json;",
            "multipart/form-data; boundary=x",
            "application/x-www-form-urlencodedx",
            "application/+json",
        ] {
            assert_eq!(status(check(ct, ok)), 415, "{ct}");
        }
        let none = HeaderMap::new();
        assert_eq!(status(check_with(&rule(), &none, None, ok)), 415);
        let two = headers(&[("content-type", JSON), ("content-type", JSON)]);
        assert_eq!(status(check_with(&rule(), &two, None, ok)), 400);
        let gz = headers(&[("content-type", JSON), ("content-encoding", "gzip")]);
        assert_eq!(status(check_with(&rule(), &gz, None, ok)), 415);
        let id = headers(&[("content-type", JSON), ("content-encoding", "identity")]);
        assert_eq!(check_with(&rule(), &id, None, ok), Ok(()));
    }

    #[test]
    fn duplicates_variants_and_query_are_refused() {
        let cn = "%2B8613800138000";
        for body in [
            format!("phone={cn}&phone=%2B14155550100"),
            format!("phone=%2B14155550100&phone={cn}"),
            format!("phone={cn}&Phone=%2B14155550100"),
            format!("phone={cn}&PHONE=%2B14155550100"),
            format!("phone={cn}&phone[]=%2B14155550100"),
            format!("phone[]={cn}"),
            format!("phon%65={cn}&phone=%2B14155550100"),
            format!("Phone={cn}"),
            "name=a".to_string(),
        ] {
            assert_eq!(status(check(FORM, &body)), 400, "{body}");
        }
        for body in [
            r#"{"phone":"+8613800138000","phone":"+14155550100"}"#,
            r#"{"phone":"+8613800138000","Phone":"+14155550100"}"#,
            r#"{"phone":"+8613800138000","ph\u006fne":"+14155550100"}"#,
            r#"{"phone":8613800138000}"#,
            r#"{"phone":["+8613800138000"]}"#,
            r#"["+8613800138000"]"#,
            r#"{"phone":"+8613800138000"} x"#,
            "{not json",
        ] {
            assert_eq!(status(check(JSON, body)), 400, "{body}");
        }
        let h = headers(&[("content-type", JSON)]);
        let ok = r#"{"phone":"+8613800138000"}"#;
        for q in ["phone=%2B14155550100", "Phone=1", "phone[]=1", "a=1&phone"] {
            assert_eq!(status(check_with(&rule(), &h, Some(q), ok)), 400, "{q}");
        }
        assert_eq!(check_with(&rule(), &h, Some("ref=ad&x=1"), ok), Ok(()));
    }

    #[test]
    fn polyglot_form_and_json_is_refused() {
        let body = r#"{"phone":"+14155550100","x":"&phone=%2B8613800138000"}"#;
        assert_eq!(status(check(FORM, body)), 400);
    }

    #[test]
    fn json_pointer_fields() {
        let mut r = rule();
        r.field = "/user/phone".into();
        r.pointer = vec!["user".into(), "phone".into()];
        let h = headers(&[("content-type", JSON)]);
        assert_eq!(
            check_with(
                &r,
                &h,
                None,
                r#"{"user":{"phone":"+8613800138000"},"phone":"+1"}"#
            ),
            Ok(())
        );
        assert_eq!(
            status(check_with(
                &r,
                &h,
                None,
                r#"{"user":{"phone":"+14155550100"}}"#
            )),
            403
        );
        assert_eq!(
            status(check_with(
                &r,
                &h,
                None,
                r#"{"user":{"phone":"+8613800138000"},"user":{"phone":"+14155550100"}}"#
            )),
            400
        );
        assert_eq!(status(check_with(&r, &h, None, r#"{"user":"x"}"#)), 400);
        let form = headers(&[("content-type", FORM)]);
        assert_eq!(status(check_with(&r, &form, None, "user=1")), 415);
    }

    #[test]
    fn oversized_bodies() {
        let big = " ".repeat(300);
        assert_eq!(check(JSON, &big), Err(BodyRefusal::TooLarge { limit: 256 }));
    }

    #[test]
    fn form_decoding_matches_urlsearchparams() {
        assert_eq!(form_decode("a+b%20c").as_deref(), Some("a b c"));
        assert_eq!(form_decode("%zz%4").as_deref(), Some("%zz%4"));
        assert_eq!(form_decode("%").as_deref(), Some("%"));
        assert_eq!(form_decode("%C3%A9").as_deref(), Some("é"));
        assert_eq!(form_decode("%ff"), None);
    }
}

#[cfg(test)]
mod body_key_tests {
    use super::*;

    fn spec(normalize: BodyKeyNormalize, prefix: Option<u8>) -> BodyKeyConfig {
        BodyKeyConfig {
            field: "phone".into(),
            pointer: vec!["phone".into()],
            normalize,
            number_prefix: prefix,
            max_body_bytes: 1024,
        }
    }

    fn value(s: &BodyKeyConfig, body: &str) -> Result<String, BodyRefusal> {
        let mut h = HeaderMap::new();
        h.insert(
            "content-type",
            "application/x-www-form-urlencoded"
                .parse()
                .unwrap_or_else(|_| unreachable!()),
        );
        body_key_value(
            s,
            &BodyInput {
                headers: &h,
                query: None,
                body: body.as_bytes(),
            },
        )
    }

    #[test]
    fn phone_keys_are_e164_and_cut_to_their_range() {
        let whole = spec(BodyKeyNormalize::Phone, None);
        assert_eq!(
            value(&whole, "phone=%2B86+138-0013-8000").as_deref(),
            Ok("+8613800138000")
        );
        assert_eq!(
            value(&whole, "phone=0086+13800138000").as_deref(),
            Ok("+8613800138000")
        );
        let range = spec(BodyKeyNormalize::Phone, Some(9));
        assert_eq!(
            value(&range, "phone=%2B86+138+0013+8000").as_deref(),
            Ok("+861380013")
        );
        assert_eq!(
            value(&range, "phone=%2B86+138+0013+9999").as_deref(),
            Ok("+861380013")
        );
        assert_eq!(
            value(&range, "phone=%2B86+139+0013+8000").as_deref(),
            Ok("+861390013")
        );
        assert_eq!(
            value(&whole, "phone=call+me").map_err(|e| e.status()),
            Err(400)
        );
        assert_eq!(
            value(&whole, "phone=%2B8613800138000&phone=%2B8613800138001").map_err(|e| e.status()),
            Err(400)
        );
    }
}

#[cfg(test)]
mod loose_parser_tests {
    use super::*;

    fn rule() -> BodyRuleConfig {
        BodyRuleConfig {
            route: 0,
            field: "phone".into(),
            pointer: vec!["phone".into()],
            allowed_calling_codes: vec![],
            allowed_regions: vec!["CN".into()],
            number_types: vec![PhoneType::Mobile],
            methods: vec![],
            max_body_bytes: 512,
        }
    }

    fn status(ct: &str, query: Option<&str>, body: &[u8]) -> u16 {
        let mut h = HeaderMap::new();
        h.insert(
            "content-type",
            ct.parse().unwrap_or_else(|_| unreachable!()),
        );
        check_body(
            &rule(),
            &BodyInput {
                headers: &h,
                query,
                body,
            },
        )
        .err()
        .map_or(200, |e| e.status())
    }

    const FORM: &str = "application/x-www-form-urlencoded";
    const JSON: &str = "application/json";

    #[test]
    fn spellings_loose_parsers_fold_are_refused() {
        // Found by an attack run against the first version: each reached the
        // origin with a refused number visible to some origin stack.
        for body in [
            &br#"{"phone":"+14155550100"}&phone=%2B8613800138000"#[..],
            b"\xEF\xBB\xBF{\"phone\":\"+14155550100\",\"x\":\"&phone=%2B8613800138000&y=\"}",
            b"  [1]&phone=%2B8613800138000",
            b"phone=%2B8613800138000&%20phone=%2B14155550100",
            b"phone=%2B8613800138000&phone%00=%2B14155550100",
            "phone=%2B8613800138000&\u{ff50}hone=%2B14155550100".as_bytes(),
        ] {
            assert_eq!(
                status(FORM, None, body),
                400,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        for body in [
            "{\"phone\":\"+8613800138000\",\"\u{17f}\u{17f}\":1,\"p\u{200b}hone\":\"+14155550100\"}",
            "{\"phone\":\"+8613800138000\",\"PHONE\":\"+14155550100\"}",
        ] {
            assert_eq!(status(JSON, None, body.as_bytes()), 400, "{body}");
        }
        assert_eq!(
            status(
                JSON,
                Some("x=1;phone=%2B14155550100"),
                br#"{"phone":"+8613800138000"}"#
            ),
            400
        );
        assert_eq!(status(FORM, None, b"phone=%2B8613800138000&name=a"), 200);
    }

    #[test]
    fn account_keys_fold_what_origins_fold() {
        let spec = BodyKeyConfig {
            field: "username".into(),
            pointer: vec!["username".into()],
            normalize: BodyKeyNormalize::Account,
            number_prefix: None,
            max_body_bytes: 512,
        };
        let key = |body: &str| {
            let mut h = HeaderMap::new();
            h.insert(
                "content-type",
                JSON.parse().unwrap_or_else(|_| unreachable!()),
            );
            body_key_value(
                &spec,
                &BodyInput {
                    headers: &h,
                    query: None,
                    body: body.as_bytes(),
                },
            )
        };
        let victim = key(r#"{"username":"victim"}"#);
        for spelling in [
            "\u{ff56}\u{ff49}\u{ff43}\u{ff54}\u{ff49}\u{ff4d}",
            "\u{1d42f}\u{1d422}\u{1d41c}\u{1d42d}\u{1d422}\u{1d426}",
            "VICTIM",
            " victim\\t",
            "vic\u{ad}tim",
            "victim\u{200b}",
        ] {
            assert_eq!(
                key(&format!(r#"{{"username":"{spelling}"}}"#)),
                victim,
                "{spelling:?}"
            );
        }
        // A second, differently spelled username field is refused, not keyed.
        assert_eq!(
            key("{\"username\":\"rand-1\",\"u\u{17f}ername\":\"victim\"}").map_err(|e| e.status()),
            Err(400)
        );
    }

    #[test]
    fn the_compiled_classifier_agrees_with_libphonenumber_everywhere() {
        // Every region's example numbers of every type, and numbers made by
        // changing their digits and lengths: the compiled patterns give the
        // type phonenumber's own number_type gives.
        let db = &*phonenumber::metadata::DATABASE;
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut checked = 0;
        for meta in db.iter() {
            let d = meta.descriptors();
            let examples: Vec<String> = [
                Some(d.general()),
                d.fixed_line(),
                d.mobile(),
                d.toll_free(),
                d.premium_rate(),
                d.shared_cost(),
                d.personal_number(),
                d.voip(),
                d.pager(),
                d.uan(),
                d.get(phonenumber::Type::Voicemail),
            ]
            .into_iter()
            .flatten()
            .filter_map(|d| d.example().map(str::to_string))
            .collect();
            for example in examples {
                let mut variants = vec![example.clone()];
                for _ in 0..12 {
                    let mut digits: Vec<u8> = example.bytes().collect();
                    match next() % 3 {
                        0 if !digits.is_empty() => {
                            let i = (next() % digits.len() as u64) as usize;
                            digits[i] = b'0' + (next() % 10) as u8;
                        }
                        1 => digits.push(b'0' + (next() % 10) as u8),
                        _ => {
                            digits.pop();
                        }
                    }
                    variants.push(String::from_utf8(digits).unwrap());
                }
                for value in variants {
                    let text = format!("+{}{value}", meta.country_code());
                    let Ok(number) = phonenumber::parse(None, &text) else {
                        continue;
                    };
                    let expected = number.number_type(db);
                    let got = number.metadata(db).map_or(phonenumber::Type::Unknown, |m| {
                        number_type(m, &number.national().value().to_string())
                    });
                    assert_eq!(got, expected, "{text}");
                    checked += 1;
                }
            }
        }
        assert!(checked > 10_000, "{checked}");
    }
}
