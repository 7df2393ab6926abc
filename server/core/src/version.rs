//! Version ordering: "latest" compares numerically field by field (`1.10.0` > `1.9.2`).
//!
//! Versions come from people (the catalogue) and from detection scripts, which print what the
//! software prints: `Chatty version 1.0`, `<b>1.0</b>`, `1.0.0 (build 55)`. Only the first
//! version-like token counts ([`detected`]); text without one is an *unknown* version, which
//! sorts below every known one, so it can never pass for the newest.

use std::cmp::Ordering;

/// The first version-like token of `s`: digits with dots (`10.0.19045`), an optional suffix
/// joined by letters, digits or `-+_.~` (`1.1.1w`, `2.3.4-beta.1`), starting at a word
/// boundary, a leading `v` dropped (`v1.2` → `1.2`). `None` when there is none: the version
/// is unknown.
pub fn detected(s: &str) -> Option<&str> {
    let b = s.as_bytes();
    let digit = |i: usize| b.get(i).is_some_and(u8::is_ascii_digit);
    let alnum = |i: usize| b.get(i).is_some_and(u8::is_ascii_alphanumeric);
    for i in 0..b.len() {
        if i > 0 && b[i - 1].is_ascii_alphanumeric() {
            continue;
        }
        let start = if matches!(b[i], b'v' | b'V') && digit(i + 1) {
            i + 1
        } else {
            i
        };
        if !digit(start) {
            continue;
        }
        let mut end = start;
        while digit(end) {
            end += 1;
        }
        loop {
            if alnum(end) {
                end += 1;
            } else if matches!(b.get(end), Some(b'.' | b'-' | b'+' | b'_' | b'~')) && alnum(end + 1)
            {
                end += 2;
            } else {
                break;
            }
        }
        // `start` and `end` sit next to ASCII bytes, so both are char boundaries.
        return Some(&s[start..end]);
    }
    None
}

/// Compares two versions by their [`detected`] tokens, field by field. Fields are split on
/// `.`, `-`, `+` and `_`; numeric fields compare as numbers, others as text, a number sorts
/// before text, and a missing field counts as 0 (`1.2` == `1.2.0`). An unknown version sorts
/// below every known one (unknown ones compare by their text). Total and consistent with
/// equality of the parts.
pub fn compare(a: &str, b: &str) -> Ordering {
    match (detected(a), detected(b)) {
        (Some(x), Some(y)) => compare_fields(x, y),
        (Some(_), None) => Ordering::Greater,
        (None, Some(_)) => Ordering::Less,
        (None, None) => compare_fields(a, b),
    }
}

fn compare_fields(a: &str, b: &str) -> Ordering {
    // Without allocating: planning compares versions for every item of every computer.
    let mut pa = fields(a);
    let mut pb = fields(b);
    loop {
        let (x, y) = match (pa.next(), pb.next()) {
            (None, None) => return Ordering::Equal,
            (x, y) => (x.unwrap_or(Part::Num(0)), y.unwrap_or(Part::Num(0))),
        };
        let o = match (x, y) {
            (Part::Num(p), Part::Num(q)) => p.cmp(&q),
            (Part::Num(_), Part::Text(_)) => Ordering::Less,
            (Part::Text(_), Part::Num(_)) => Ordering::Greater,
            (Part::Text(p), Part::Text(q)) => p
                .bytes()
                .map(|c| c.to_ascii_lowercase())
                .cmp(q.bytes().map(|c| c.to_ascii_lowercase())),
        };
        if o != Ordering::Equal {
            return o;
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Part<'a> {
    Num(u128),
    /// Compared ASCII-case-insensitively.
    Text(&'a str),
}

fn fields(v: &str) -> impl Iterator<Item = Part<'_>> {
    v.trim()
        .trim_start_matches(['v', 'V'])
        .split(['.', '-', '+', '_'])
        .map(|p| match p.parse::<u128>() {
            Ok(n) => Part::Num(n),
            Err(_) => Part::Text(p),
        })
}

/// Whether `v` can name a version in a catalogue: 1 to 64 characters, with a digit, no
/// whitespace (`1.10.0`, `2.3.4-beta.1`).
pub fn valid_text(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 64
        && v.chars().any(|c| c.is_ascii_digit())
        && !v.chars().any(char::is_whitespace)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn numeric_fields() {
        assert_eq!(compare("1.10.0", "1.9.2"), Ordering::Greater);
        assert_eq!(compare("1.2", "1.2.0"), Ordering::Equal);
        assert_eq!(compare("2.0", "10.0"), Ordering::Less);
        assert_eq!(compare("v1.0", "1.0"), Ordering::Equal);
    }

    #[test]
    fn the_first_version_like_token_counts() {
        assert_eq!(detected("Chatty version 1.0"), Some("1.0"));
        assert_eq!(detected("<b>1.0</b>"), Some("1.0"));
        assert_eq!(detected("1.0.0 (build 55)"), Some("1.0.0"));
        assert_eq!(detected("v2.3.4-beta.1"), Some("2.3.4-beta.1"));
        assert_eq!(detected("OpenSSL 1.1.1w  11 Sep 2023"), Some("1.1.1w"));
        assert_eq!(detected("10.0.19045.3803"), Some("10.0.19045.3803"));
        assert_eq!(detected("1.2."), Some("1.2"));
        assert_eq!(detected("x64 build"), None);
        assert_eq!(detected("Chatty"), None);
        assert_eq!(detected(""), None);
    }

    #[test]
    fn text_never_passes_for_the_newest() {
        assert_eq!(compare("Chatty version 1.0", "1.0"), Ordering::Equal);
        assert_eq!(compare("<b>1.0</b>", "2.0"), Ordering::Less);
        assert_eq!(compare("Chatty version 1.0", "1.1"), Ordering::Less);
        assert_eq!(compare("Chatty", "0"), Ordering::Less);
        assert_eq!(compare("<b>unknown</b>", "0.0.1"), Ordering::Less);
    }

    proptest! {
        #[test]
        fn antisymmetric(a in "[0-9a-c.]{0,8}", b in "[0-9a-c.]{0,8}") {
            prop_assert_eq!(compare(&a, &b), compare(&b, &a).reverse());
        }
        #[test]
        fn transitive(a in "[0-9.]{1,6}", b in "[0-9.]{1,6}", c in "[0-9.]{1,6}") {
            if compare(&a, &b).is_le() && compare(&b, &c).is_le() {
                prop_assert!(compare(&a, &c).is_le());
            }
        }
        #[test]
        fn text_around_a_version_does_not_change_it(
            pre in "[A-Za-z ]{0,12}",
            post in "( [A-Za-z()<>/ ]{0,12})?",
            x in (0u32..50, 0u32..50, 0u32..50),
        ) {
            let v = format!("{}.{}.{}", x.0, x.1, x.2);
            let text = format!("{pre} {v}{post}");
            prop_assert_eq!(compare(&text, &v), Ordering::Equal);
        }
        #[test]
        fn no_version_sorts_below_every_version(t in "[A-Za-z <>/]{0,16}", x in (0u32..50, 0u32..50)) {
            let v = format!("{}.{}", x.0, x.1);
            prop_assert_eq!(compare(&t, &v), Ordering::Less);
        }
        #[test]
        fn transitive_with_text(a in "[0-9a-cv .<>]{0,8}", b in "[0-9a-cv .<>]{0,8}", c in "[0-9a-cv .<>]{0,8}") {
            if compare(&a, &b).is_le() && compare(&b, &c).is_le() {
                prop_assert!(compare(&a, &c).is_le());
            }
        }
        #[test]
        fn numeric_order_matches_tuples(x in (0u32..50, 0u32..50, 0u32..50), y in (0u32..50, 0u32..50, 0u32..50)) {
            let a = format!("{}.{}.{}", x.0, x.1, x.2);
            let b = format!("{}.{}.{}", y.0, y.1, y.2);
            prop_assert_eq!(compare(&a, &b), x.cmp(&y));
        }
    }
}
