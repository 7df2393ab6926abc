//! Values that carry their checks: a time zone, an e-mail address, a tag (and
//! [`CronExpr`](crate::cron::CronExpr), which lives with its evaluator). Each type's
//! `parse` is the one place its rule lives; the API parses input into them once, and past that
//! nothing re-parses a string or falls back to a default.
//!
//! On disk they are the same strings as before these types existed, wrapped in [`Stored`]: a
//! stored value is parsed once when its record is read, and one that no longer parses (a rule
//! tightened, a zone name a newer database dropped) keeps its text and reports why at use,
//! rather than making its record, and every scan over it, unreadable.

use std::fmt;
use std::str::FromStr;

use chrono_tz::Tz;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a text is not a valid value of its type. The message is a sentence a person reads; the
/// API adds the field name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

/// A type with a text form and one parse rule: what [`Stored`] needs to keep it on disk.
pub trait Checked: Sized {
    /// The rule. `parse(x.as_text()) == Ok(x)` for every value.
    fn parse(s: &str) -> Result<Self, ParseError>;
    /// The text stored and shown.
    fn as_text(&self) -> &str;
}

/// An IANA time zone such as `Europe/Berlin` (case-sensitive, as the database spells it) or
/// `UTC`. Holding one proves the name is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TimeZone(Tz);

impl TimeZone {
    pub const UTC: TimeZone = TimeZone(Tz::UTC);

    /// Surrounding blanks are ignored.
    pub fn parse(s: &str) -> Result<TimeZone, ParseError> {
        let t = s.trim();
        t.parse::<Tz>().map(TimeZone).map_err(|_| {
            ParseError(format!(
                "unknown time zone '{t}': use an IANA name such as Europe/Berlin"
            ))
        })
    }

    pub fn tz(self) -> Tz {
        self.0
    }

    pub fn name(self) -> &'static str {
        self.0.name()
    }
}

impl Default for TimeZone {
    fn default() -> Self {
        TimeZone::UTC
    }
}

impl From<Tz> for TimeZone {
    fn from(tz: Tz) -> Self {
        TimeZone(tz)
    }
}

impl FromStr for TimeZone {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TimeZone::parse(s)
    }
}

impl fmt::Display for TimeZone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Checked for TimeZone {
    fn parse(s: &str) -> Result<Self, ParseError> {
        TimeZone::parse(s)
    }
    fn as_text(&self) -> &str {
        self.name()
    }
}

/// An e-mail address (`user@domain`, at most 254 bytes, trimmed), by the rule the mailer's
/// `lettre::Address` applies: a valid local part and a domain that is a host name (also
/// internationalised) or an IP literal. Case is kept as written.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EmailAddress(String);

impl EmailAddress {
    pub fn parse(s: &str) -> Result<EmailAddress, ParseError> {
        let t = s.trim();
        if t.len() <= 254 && address_ok(t) {
            Ok(EmailAddress(t.to_string()))
        } else {
            Err(ParseError(format!("'{t}' is not an e-mail address")))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The address in lower case: how logins and user records compare addresses.
    pub fn to_lowercase(&self) -> EmailAddress {
        EmailAddress(self.0.to_lowercase())
    }
}

/// `lettre::Address::from_str` (0.11), without the SMTP crate in the pure core.
fn address_ok(s: &str) -> bool {
    let Some((user, domain)) = s.rsplit_once('@') else {
        return false;
    };
    let domain_ascii = |d: &str| {
        if email_address::EmailAddress::is_valid_domain(d) {
            return true;
        }
        let ip = d
            .strip_prefix('[')
            .and_then(|ip| ip.strip_suffix(']'))
            .unwrap_or(d);
        ip.parse::<std::net::IpAddr>().is_ok()
    };
    email_address::EmailAddress::is_valid_local_part(user)
        && (domain_ascii(domain) || idna::domain_to_ascii(domain).is_ok_and(|d| domain_ascii(&d)))
}

impl FromStr for EmailAddress {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EmailAddress::parse(s)
    }
}

impl fmt::Display for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Checked for EmailAddress {
    fn parse(s: &str) -> Result<Self, ParseError> {
        EmailAddress::parse(s)
    }
    fn as_text(&self) -> &str {
        &self.0
    }
}

/// A computer tag (also a person's username): trimmed, not empty, at most 64 bytes, no control
/// characters. Two tags are the same tag when they differ only in case (`Tag::key`, what the
/// tag index stores).
#[derive(Debug, Clone)]
pub struct Tag(String);

impl Tag {
    pub fn parse(s: &str) -> Result<Tag, ParseError> {
        let t = s.trim();
        if t.is_empty() {
            return Err(ParseError("must not be empty".into()));
        }
        if t.chars().count() > 200 {
            return Err(ParseError("must be at most 200 characters".into()));
        }
        if t.chars().any(char::is_control) {
            return Err(ParseError("must not contain control characters".into()));
        }
        if t.len() > 64 {
            return Err(ParseError("a tag is at most 64 characters".into()));
        }
        Ok(Tag(t.to_string()))
    }

    /// The tag as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// What tags are compared and indexed by: the text in lower case.
    pub fn key(&self) -> String {
        Tag::key_of(&self.0)
    }

    /// The key of a text that names a tag (a schedule's target, a filter).
    pub fn key_of(text: &str) -> String {
        text.to_lowercase()
    }

    /// Parses a list, dropping tags equal to an earlier one (the first spelling is kept).
    /// Linear in the list.
    pub fn parse_list<S: AsRef<str>>(v: &[S]) -> Result<Vec<Tag>, ParseError> {
        let mut seen = std::collections::HashSet::with_capacity(v.len());
        let mut out = Vec::with_capacity(v.len());
        for s in v {
            let t = Tag::parse(s.as_ref())?;
            if seen.insert(t.key()) {
                out.push(t);
            }
        }
        Ok(out)
    }
}

impl PartialEq for Tag {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for Tag {}

impl FromStr for Tag {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Tag::parse(s)
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Checked for Tag {
    fn parse(s: &str) -> Result<Self, ParseError> {
        Tag::parse(s)
    }
    fn as_text(&self) -> &str {
        &self.0
    }
}

/// A checked value as a record holds it: on disk the plain string, read back through the
/// type's rule once, when the record is decoded.
///
/// Why not refuse a stored text that no longer parses: records are read in scans (the
/// scheduler's pass, lists), and one failed decode would make all of them fail, for a value
/// that was valid when written. So the text is kept, written back unchanged, shown as it is,
/// and [`Stored::get`] reports the reason to the one use that needs the value, which names
/// it in its own error instead of guessing a default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored<T>(Result<T, Unreadable>);

/// A stored text that does not parse by its type's rule (any more).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the stored value '{text}' is no longer valid: {reason}")]
pub struct Unreadable {
    pub text: String,
    pub reason: String,
}

impl<T: Checked> Stored<T> {
    pub fn new(value: T) -> Stored<T> {
        Stored(Ok(value))
    }

    /// Reads stored text: never fails, see the type's doc.
    pub fn read(text: &str) -> Stored<T> {
        Stored(T::parse(text).map_err(|e| Unreadable {
            text: text.to_string(),
            reason: e.0,
        }))
    }

    /// The value, or why the stored text is not one.
    pub fn get(&self) -> Result<&T, &Unreadable> {
        self.0.as_ref()
    }

    /// The text as stored (for display; a valid value's text form).
    pub fn text(&self) -> &str {
        match &self.0 {
            Ok(v) => v.as_text(),
            Err(u) => &u.text,
        }
    }
}

impl Stored<Tag> {
    /// The tag's key (`Tag::key`). A stored tag that no longer meets the rule still has its
    /// text, which is all a tag is compared by: it keeps matching and being indexed as written.
    pub fn key(&self) -> String {
        Tag::key_of(self.text())
    }

    /// Whether this tag is the one `text` names (case-insensitively, as the index compares).
    pub fn is(&self, text: &str) -> bool {
        let mine = self.text();
        if mine.is_ascii() && text.is_ascii() {
            // The same answer as comparing the lower-cased texts, without allocating them
            // (resolution asks this for every tag target and computer).
            return mine.eq_ignore_ascii_case(text);
        }
        self.key() == Tag::key_of(text)
    }
}

impl<T: Checked> From<T> for Stored<T> {
    fn from(value: T) -> Self {
        Stored::new(value)
    }
}

impl<T: Checked> Serialize for Stored<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.text())
    }
}

impl<'de, T: Checked> Deserialize<'de> for Stored<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Ok(Stored::read(&text))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn round_trip<T: Checked + fmt::Debug + PartialEq>(json: &str) -> Stored<T> {
        let v: Stored<T> = serde_json::from_str(json).unwrap();
        assert_eq!(serde_json::to_string(&v).unwrap(), json);
        v
    }

    #[test]
    fn time_zone_names() {
        assert_eq!(
            TimeZone::parse("Europe/Berlin").unwrap().tz(),
            Tz::Europe__Berlin
        );
        assert_eq!(TimeZone::parse(" UTC ").unwrap(), TimeZone::UTC);
        assert_eq!(
            TimeZone::parse("Mars/Olympus"),
            Err(ParseError(
                "unknown time zone 'Mars/Olympus': use an IANA name such as Europe/Berlin".into()
            ))
        );
        assert!(TimeZone::parse("").is_err());
        assert_eq!(
            TimeZone::parse(" Nowhere ").unwrap_err().0,
            "unknown time zone 'Nowhere': use an IANA name such as Europe/Berlin"
        );
        assert!(
            TimeZone::parse("europe/berlin").is_err(),
            "names are case-sensitive"
        );
    }

    #[test]
    fn time_zone_serde_is_the_name() {
        let z = round_trip::<TimeZone>("\"Europe/Berlin\"");
        assert_eq!(z.get().unwrap().tz(), Tz::Europe__Berlin);
        let gone = round_trip::<TimeZone>("\"Mars/Olympus\"");
        assert_eq!(gone.text(), "Mars/Olympus");
        let e = gone.get().unwrap_err();
        assert!(
            e.to_string().contains("unknown time zone 'Mars/Olympus'"),
            "{e}"
        );
    }

    #[test]
    fn email_addresses() {
        for ok in [
            "it@example.com",
            " Anna.Berg+x@example.co.uk ",
            "a@[192.0.2.1]",
            "jörg@bücher.example",
        ] {
            assert!(EmailAddress::parse(ok).is_ok(), "{ok}");
        }
        assert_eq!(
            EmailAddress::parse(" A@b.example ").unwrap().as_str(),
            "A@b.example"
        );
        for bad in [
            "",
            "plain",
            "@example.com",
            "a@",
            "a b@example.com",
            "a@exa mple.com",
        ] {
            assert_eq!(
                EmailAddress::parse(bad),
                Err(ParseError(format!(
                    "'{}' is not an e-mail address",
                    bad.trim()
                ))),
                "{bad}"
            );
        }
        let long = format!("{}@example.com", "a".repeat(250));
        assert!(EmailAddress::parse(&long).is_err());
        let e = round_trip::<EmailAddress>("\"it@example.com\"");
        assert_eq!(e.get().unwrap().as_str(), "it@example.com");
        assert!(
            round_trip::<EmailAddress>("\"not an address\"")
                .get()
                .is_err()
        );
    }

    #[test]
    fn tags() {
        assert_eq!(Tag::parse("  web  ").unwrap().as_str(), "web");
        assert_eq!(Tag::parse("Web"), Tag::parse("wEB"));
        assert_eq!(Tag::parse("ÄRZTE").unwrap().key(), "ärzte");
        assert_eq!(Tag::parse(" "), Err(ParseError("must not be empty".into())));
        assert_eq!(
            Tag::parse("a\tb"),
            Err(ParseError("must not contain control characters".into()))
        );
        assert_eq!(
            Tag::parse(&"x".repeat(65)),
            Err(ParseError("a tag is at most 64 characters".into()))
        );
        assert!(Tag::parse(&"x".repeat(64)).is_ok());
        let list = Tag::parse_list(&["Web", "db", "WEB", " db "]).unwrap();
        let texts: Vec<&str> = list.iter().map(Tag::as_str).collect();
        assert_eq!(texts, ["Web", "db"]);
        let t = round_trip::<Tag>("\"Web\"");
        assert_eq!(t.get().unwrap().as_str(), "Web");
        assert!(round_trip::<Tag>("\"\"").get().is_err());
    }
}
