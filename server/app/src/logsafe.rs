//! Text from requests (login e-mails, what agents say about themselves, parse errors quoting a
//! body) on its way into the logs. With the text formatter a field is printed as is, so a
//! newline in a login e-mail would forge a log line, and a megabyte of it would flood the log.

/// How many characters of one value reach a log line.
pub const MAX_CHARS: usize = 200;

/// `s` fit for a log field: at most [`MAX_CHARS`] characters (`…` marks a cut) and every
/// control character escaped (`\n`, `\u{1b}`), so one value is always one line.
pub fn log_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(MAX_CHARS + 8));
    for (i, c) in s.chars().enumerate() {
        if i == MAX_CHARS {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newlines_cannot_forge_a_line() {
        let v = log_value("a@x.example\n2026-01-01T00:00:00Z INFO login ok\r\u{1b}[2J");
        assert!(!v.chars().any(char::is_control), "{v}");
        assert_eq!(
            v,
            "a@x.example\\n2026-01-01T00:00:00Z INFO login ok\\r\\u{1b}[2J"
        );
    }

    #[test]
    fn long_values_are_cut() {
        let v = log_value(&"é".repeat(10_000));
        assert_eq!(v.chars().count(), MAX_CHARS + 1);
        assert!(v.ends_with('…'));
        assert_eq!(log_value("short"), "short");
    }
}
