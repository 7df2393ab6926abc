//! The second factor: TOTP (RFC 6238) with the parameters every authenticator app assumes —
//! HMAC-SHA1, 6 digits, 30-second steps — and base32 secrets (RFC 4648, no padding). Pure: the
//! caller passes the time and remembers the last accepted step.

use hmac::{Hmac, Mac};
use sha1::Sha1;
use subtle::ConstantTimeEq;
use upkeep_core::domain::Time;

/// Seconds per time step.
pub const STEP_SECONDS: i64 = 30;
/// Digits of a code.
pub const DIGITS: u32 = 6;
/// Steps either side of the current one whose codes are still accepted (clock drift, typing).
pub const DRIFT_STEPS: u64 = 1;

/// A fresh secret: 160 random bits (RFC 4226's recommended length), base32.
pub fn new_secret() -> String {
    let bytes: [u8; 20] = rand::random();
    base32_encode(&bytes)
}

/// The `otpauth://` URL authenticator apps read from a QR code.
pub fn otpauth_url(email: &str, secret: &str) -> String {
    // The label is a URI path segment: keep unreserved characters and `@`, escape the rest.
    let mut label = String::new();
    for b in email.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~@".contains(&b) {
            label.push(b as char);
        } else {
            label.push_str(&format!("%{b:02X}"));
        }
    }
    format!("otpauth://totp/Upkeep:{label}?secret={secret}&issuer=Upkeep")
}

/// The time step `now` falls in.
pub fn step_at(now: Time) -> u64 {
    (now.timestamp().max(0) / STEP_SECONDS) as u64
}

/// The code for `step` (RFC 4226 HOTP with the step as counter), zero-padded to `digits`.
pub fn code(key: &[u8], step: u64, digits: u32) -> String {
    // HMAC takes keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(&step.to_be_bytes());
    let h = mac.finalize().into_bytes();
    let offset = (h[h.len() - 1] & 0x0f) as usize;
    let bin = u32::from_be_bytes([
        h[offset] & 0x7f,
        h[offset + 1],
        h[offset + 2],
        h[offset + 3],
    ]);
    let n = u64::from(bin) % 10u64.pow(digits);
    format!("{n:0width$}", width = digits as usize)
}

/// Checks `given` against the base32 `secret` at `now`: returns the step it matched, which must
/// be later than `last_step` (a code is good once). Spaces in `given` are ignored.
pub fn verify(secret: &str, given: &str, now: Time, last_step: Option<u64>) -> Option<u64> {
    let key = base32_decode(secret)?;
    let given: String = given.chars().filter(|c| !c.is_whitespace()).collect();
    if given.len() != DIGITS as usize || !given.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let current = step_at(now);
    let mut matched = None;
    // Every candidate is compared (in constant time) so timing says nothing about which matched.
    for step in current.saturating_sub(DRIFT_STEPS)..=current + DRIFT_STEPS {
        let ok: bool = code(&key, step, DIGITS)
            .as_bytes()
            .ct_eq(given.as_bytes())
            .into();
        if ok && last_step.is_none_or(|l| step > l) && matched.is_none() {
            matched = Some(step);
        }
    }
    matched
}

const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

pub fn base32_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    let (mut buf, mut bits) = (0u32, 0u32);
    for &b in bytes {
        buf = (buf << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((buf >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buf << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// Decodes base32 (case-insensitive, `=` padding and spaces ignored); `None` if malformed.
pub fn base32_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 5 / 8);
    let (mut buf, mut bits) = (0u32, 0u32);
    for c in s.bytes().filter(|c| *c != b'=' && !c.is_ascii_whitespace()) {
        let v = ALPHABET.iter().position(|a| *a == c.to_ascii_uppercase())? as u32;
        buf = ((buf << 5) | v) & 0xffff;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    /// RFC 6238 appendix B, the SHA-1 rows (8 digits; 6-digit codes are their last six).
    #[test]
    fn rfc6238_sha1_vectors() {
        let key = b"12345678901234567890";
        for (t, want) in [
            (59, "94287082"),
            (1111111109, "07081804"),
            (1111111111, "14050471"),
            (1234567890, "89005924"),
            (2000000000, "69279037"),
            (20000000000, "65353130"),
        ] {
            let step = step_at(Utc.timestamp_opt(t, 0).unwrap());
            assert_eq!(code(key, step, 8), want, "T = {t}");
            assert_eq!(code(key, step, DIGITS), want[2..], "T = {t}, 6 digits");
        }
    }

    #[test]
    fn base32_round_trips_and_matches_rfc4648() {
        // RFC 4648 §10 (without padding).
        for (plain, enc) in [
            ("", ""),
            ("f", "MY"),
            ("fo", "MZXQ"),
            ("foo", "MZXW6"),
            ("foob", "MZXW6YQ"),
            ("fooba", "MZXW6YTB"),
            ("foobar", "MZXW6YTBOI"),
        ] {
            assert_eq!(base32_encode(plain.as_bytes()), enc);
            assert_eq!(base32_decode(enc).unwrap(), plain.as_bytes());
        }
        assert_eq!(base32_decode("mzxw 6ytb oi======").unwrap(), b"foobar");
        assert_eq!(base32_decode("MZ1"), None);
        let s = new_secret();
        assert_eq!(s.len(), 32);
        assert_eq!(base32_decode(&s).unwrap().len(), 20);
    }

    #[test]
    fn verify_accepts_one_step_of_drift_and_each_step_once() {
        let secret = base32_encode(b"12345678901234567890");
        let now = Utc.timestamp_opt(1111111111, 0).unwrap();
        let cur = step_at(now);
        let key = b"12345678901234567890";
        for step in [cur - 1, cur, cur + 1] {
            assert_eq!(verify(&secret, &code(key, step, 6), now, None), Some(step));
        }
        assert_eq!(verify(&secret, &code(key, cur + 2, 6), now, None), None);
        assert_eq!(verify(&secret, &code(key, cur - 2, 6), now, None), None);
        // Used once: the same step (or an earlier one) is refused afterwards.
        assert_eq!(verify(&secret, &code(key, cur, 6), now, Some(cur)), None);
        assert_eq!(
            verify(&secret, &code(key, cur - 1, 6), now, Some(cur)),
            None
        );
        assert_eq!(
            verify(&secret, &code(key, cur + 1, 6), now, Some(cur)),
            Some(cur + 1)
        );
        let c = code(key, cur, 6);
        assert_eq!(
            verify(&secret, &format!("{} {}", &c[..3], &c[3..]), now, None),
            Some(cur)
        );
        for bad in ["", "12345", "1234567", "abcdef"] {
            assert_eq!(verify(&secret, bad, now, None), None, "{bad}");
        }
    }

    #[test]
    fn otpauth_url_escapes_the_label() {
        assert_eq!(
            otpauth_url("a+b@x.example", "ABC"),
            "otpauth://totp/Upkeep:a%2Bb@x.example?secret=ABC&issuer=Upkeep"
        );
    }
}
