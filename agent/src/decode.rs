//! Script output as text. On Unix it is UTF-8 (invalid bytes become U+FFFD). On Windows a
//! console program writes in the console's code page (the OEM code page, e.g. 437 or 850),
//! some programs write UTF-16LE (with or without a byte-order mark), and modern ones (or a
//! script after `chcp 65001`) write UTF-8. The choice is made from the bytes:
//!
//! 1. a UTF-16LE byte-order mark, or NUL bytes in the high half of many 16-bit units: UTF-16LE;
//! 2. a UTF-8 byte-order mark, the UTF-8 code page (65001), or bytes that are valid UTF-8: UTF-8
//!    (plain ASCII is all three; the OEM code pages agree with it there);
//! 3. otherwise the console code page: built-in tables for 437 and 850, the system's tables
//!    (`MultiByteToWideChar`) for the others.
//!
//! Pure functions, so that the rules are tested on any OS; the system's tables come in as a
//! function (`platform::decode_code_page`).

/// How a stream's bytes are decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Encoding {
    Utf8,
    Utf16Le,
    CodePage(u32),
}

/// The system's decoder for a code page (`None` when it has none).
pub(crate) type SystemDecoder = fn(&[u8], u32) -> Option<String>;

const UTF8_BOM: &[u8] = &[0xEF, 0xBB, 0xBF];
const UTF16LE_BOM: &[u8] = &[0xFF, 0xFE];
const CP_UTF8: u32 = 65001;

/// The upper halves (0x80..=0xFF) of the two most common OEM code pages.
const CP437: &str = "ÇüéâäàåçêëèïîìÄÅÉæÆôöòûùÿÖÜ¢£¥₧ƒáíóúñÑªº¿⌐¬½¼¡«»░▒▓│┤╡╢╖╕╣║╗╝╜╛┐└┴┬├─┼╞╟╚╔╩╦╠═╬╧╨╤╥╙╘╒╓╫╪┘┌█▄▌▐▀αßΓπΣσµτΦΘΩδ∞φε∩≡±≥≤⌠⌡÷≈°∙·√ⁿ²■\u{a0}";
const CP850: &str = "ÇüéâäàåçêëèïîìÄÅÉæÆôöòûùÿÖÜø£Ø×ƒáíóúñÑªº¿®¬½¼¡«»░▒▓│┤ÁÂÀ©╣║╗╝¢¥┐└┴┬├─┼ãÃ╚╔╩╦╠═╬¤ðÐÊËÈıÍÎÏ┘┌█▄¦Ì▀ÓßÔÒõÕµþÞÚÛÙýÝ¯´\u{ad}±‗¾¶§÷¸°¨·¹³²■\u{a0}";

/// Which encoding `bytes` are in; `code_page` is the console's (`None`: UTF-8 only, as on Unix).
pub(crate) fn sniff(bytes: &[u8], code_page: Option<u32>) -> Encoding {
    let Some(code_page) = code_page else {
        return Encoding::Utf8;
    };
    if bytes.starts_with(UTF16LE_BOM) || looks_like_utf16le(bytes) {
        return Encoding::Utf16Le;
    }
    if bytes.starts_with(UTF8_BOM) || code_page == CP_UTF8 {
        return Encoding::Utf8;
    }
    match std::str::from_utf8(bytes) {
        Ok(_) => Encoding::Utf8,
        // Valid but for a character cut at the end (a read boundary).
        Err(e) if e.error_len().is_none() && e.valid_up_to() + 4 > bytes.len() => Encoding::Utf8,
        Err(_) => Encoding::CodePage(code_page),
    }
}

/// NUL bytes in odd positions (the high half of Latin text in UTF-16LE) in at least a quarter
/// of the first 256 units, and few in even positions: single-byte text holds no NULs at all.
fn looks_like_utf16le(bytes: &[u8]) -> bool {
    let units: Vec<&[u8]> = bytes.chunks_exact(2).take(256).collect();
    if units.is_empty() {
        return false;
    }
    let odd_nuls = units.iter().filter(|u| u[1] == 0).count();
    let even_nuls = units.iter().filter(|u| u[0] == 0).count();
    odd_nuls * 4 >= units.len() && even_nuls * 4 < odd_nuls.max(1)
}

/// A whole captured stream as text.
pub(crate) fn decode_output(bytes: &[u8], code_page: Option<u32>, system: SystemDecoder) -> String {
    decode_as(bytes, sniff(bytes, code_page), true, system)
}

/// `bytes` (which start the stream when `first`) as text in `encoding`; a byte-order mark at
/// the start is dropped.
fn decode_as(bytes: &[u8], encoding: Encoding, first: bool, system: SystemDecoder) -> String {
    match encoding {
        Encoding::Utf8 => {
            let bytes = if first {
                bytes.strip_prefix(UTF8_BOM).unwrap_or(bytes)
            } else {
                bytes
            };
            String::from_utf8_lossy(bytes).into_owned()
        }
        Encoding::Utf16Le => {
            let bytes = if first {
                bytes.strip_prefix(UTF16LE_BOM).unwrap_or(bytes)
            } else {
                bytes
            };
            let units: Vec<u16> = bytes
                .chunks_exact(2)
                .map(|u| u16::from_le_bytes([u[0], u[1]]))
                .collect();
            let mut text = String::from_utf16_lossy(&units);
            if bytes.len() % 2 == 1 {
                text.push(char::REPLACEMENT_CHARACTER);
            }
            text
        }
        Encoding::CodePage(code_page) => builtin_code_page(bytes, code_page)
            .or_else(|| system(bytes, code_page))
            .unwrap_or_else(|| String::from_utf8_lossy(bytes).into_owned()),
    }
}

fn builtin_code_page(bytes: &[u8], code_page: u32) -> Option<String> {
    let table = match code_page {
        437 => CP437,
        850 => CP850,
        _ => return None,
    };
    let upper: Vec<char> = table.chars().collect();
    Some(
        bytes
            .iter()
            .map(|&b| match b.checked_sub(0x80) {
                None => char::from(b),
                Some(i) => upper.get(usize::from(i)).copied().unwrap_or('\u{fffd}'),
            })
            .collect(),
    )
}

/// How many bytes from the front of `bytes` hold whole characters in `encoding`.
fn complete_prefix(bytes: &[u8], encoding: Encoding) -> usize {
    match encoding {
        Encoding::Utf8 => match std::str::from_utf8(bytes) {
            Ok(_) => bytes.len(),
            // An incomplete character at the very end: wait for its other bytes.
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(_) => bytes.len(),
        },
        Encoding::Utf16Le => {
            let even = bytes.len() & !1;
            // A high surrogate at the end waits for its low half.
            match bytes.get(even.wrapping_sub(2)..even) {
                Some(&[lo, hi]) if (0xD800..0xDC00).contains(&u16::from_le_bytes([lo, hi])) => {
                    even - 2
                }
                _ => even,
            }
        }
        // Single-byte code pages; a double-byte one (932, 936…) may see a character split at a
        // read boundary in the live stream, never in the final result.
        Encoding::CodePage(_) => bytes.len(),
    }
}

/// One stream's live decoding: the encoding is settled by the first bytes that are not plain
/// ASCII (or that are UTF-16), then kept, so a stream is never decoded two ways.
#[derive(Debug)]
pub(crate) struct StreamDecoder {
    code_page: Option<u32>,
    settled: Option<Encoding>,
    started: bool,
}

impl StreamDecoder {
    pub(crate) fn new(code_page: Option<u32>) -> Self {
        Self {
            code_page,
            settled: None,
            started: false,
        }
    }

    /// Takes the whole characters from the front of `pending` as text; an incomplete one
    /// stays for the next call.
    pub(crate) fn take(&mut self, pending: &mut Vec<u8>, system: SystemDecoder) -> String {
        if pending.is_empty() {
            return String::new();
        }
        let encoding = match self.settled {
            Some(encoding) => encoding,
            None => {
                let encoding = sniff(pending, self.code_page);
                if encoding == Encoding::Utf16Le || !pending.is_ascii() {
                    self.settled = Some(encoding);
                }
                encoding
            }
        };
        let rest = pending.split_off(complete_prefix(pending, encoding));
        let text = decode_as(pending, encoding, !self.started, system);
        self.started |= !pending.is_empty();
        *pending = rest;
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_system(_: &[u8], _: u32) -> Option<String> {
        None
    }

    /// Stands in for the system's tables: Windows-1251 for the Cyrillic letters used below.
    fn fake_1251(bytes: &[u8], code_page: u32) -> Option<String> {
        (code_page == 1251).then(|| {
            bytes
                .iter()
                .map(|&b| match b {
                    0xC0..=0xFF => char::from_u32(0x410 + u32::from(b - 0xC0)).unwrap_or('?'),
                    _ => char::from(b),
                })
                .collect()
        })
    }

    fn utf16le(text: &str, bom: bool) -> Vec<u8> {
        let mut bytes = if bom {
            UTF16LE_BOM.to_vec()
        } else {
            Vec::new()
        };
        bytes.extend(text.encode_utf16().flat_map(u16::to_le_bytes));
        bytes
    }

    #[test]
    fn tables_cover_the_upper_half() {
        assert_eq!(CP437.chars().count(), 128);
        assert_eq!(CP850.chars().count(), 128);
    }

    #[test]
    fn unix_output_is_lossy_utf8_whatever_it_looks_like() {
        assert_eq!(
            decode_output("café\n".as_bytes(), None, no_system),
            "café\n"
        );
        assert_eq!(decode_output(b"caf\x82", None, no_system), "caf\u{fffd}");
        assert_eq!(decode_output(b"h\0i\0", None, no_system), "h\0i\0");
    }

    #[test]
    fn oem_code_pages_decode_their_own_letters() {
        // `echo café` in a console on code page 437 (US) and 850 (Western Europe).
        assert_eq!(
            decode_output(b"caf\x82\r\n", Some(437), no_system),
            "café\r\n"
        );
        assert_eq!(decode_output(b"\x9b \x9d", Some(437), no_system), "¢ ¥");
        assert_eq!(decode_output(b"\x9b \x9d", Some(850), no_system), "ø Ø");
        assert_eq!(decode_output(b"\x81ber", Some(850), no_system), "über");
    }

    #[test]
    fn other_code_pages_go_to_the_system() {
        assert_eq!(decode_output(b"\xcf\xd0\xc8", Some(1251), fake_1251), "ПРИ");
        // Without system tables the bytes are kept as lossy UTF-8 rather than lost.
        assert_eq!(decode_output(b"a\xcf", Some(1251), no_system), "a\u{fffd}");
    }

    #[test]
    fn utf8_wins_when_the_bytes_are_utf8() {
        assert_eq!(
            decode_output("café ✓".as_bytes(), Some(437), no_system),
            "café ✓"
        );
        let mut with_bom = UTF8_BOM.to_vec();
        with_bom.extend_from_slice("ü".as_bytes());
        assert_eq!(decode_output(&with_bom, Some(850), no_system), "ü");
        // After `chcp 65001` even broken UTF-8 is UTF-8.
        assert_eq!(
            decode_output(b"caf\x82", Some(65001), no_system),
            "caf\u{fffd}"
        );
    }

    #[test]
    fn utf16le_is_recognised_with_and_without_a_bom() {
        assert_eq!(
            decode_output(&utf16le("hé\r\n", true), Some(437), no_system),
            "hé\r\n"
        );
        assert_eq!(
            decode_output(&utf16le("Version 2.0\r\n", false), Some(850), no_system),
            "Version 2.0\r\n"
        );
        assert_eq!(
            decode_output(&utf16le("Привет all", true), Some(437), no_system),
            "Привет all"
        );
        // Mostly Cyrillic without a BOM, but with the spaces and digits real output has.
        assert_eq!(
            decode_output(&utf16le("Версия 2.0 ok", false), Some(866), no_system),
            "Версия 2.0 ok"
        );
    }

    #[test]
    fn the_live_stream_never_splits_a_character() {
        let mut d = StreamDecoder::new(Some(437));
        let e_acute = "é".as_bytes();
        let mut pending = b"caf".to_vec();
        pending.push(e_acute[0]);
        assert_eq!(d.take(&mut pending, no_system), "caf");
        pending.push(e_acute[1]);
        assert_eq!(d.take(&mut pending, no_system), "é");
        assert!(pending.is_empty());

        let mut d = StreamDecoder::new(Some(437));
        let bytes = utf16le("a😀b", true);
        let (head, tail) = bytes.split_at(5); // BOM, 'a', the first byte of the high surrogate
        let mut pending = head.to_vec();
        assert_eq!(d.take(&mut pending, no_system), "a");
        pending.extend_from_slice(tail);
        assert_eq!(d.take(&mut pending, no_system), "😀b");
    }

    #[test]
    fn the_live_stream_settles_on_the_first_non_ascii_bytes() {
        let mut d = StreamDecoder::new(Some(850));
        let mut pending = b"Installing...\r\n".to_vec();
        assert_eq!(d.take(&mut pending, no_system), "Installing...\r\n");
        pending.extend_from_slice(b"\x81bernommen");
        assert_eq!(d.take(&mut pending, no_system), "übernommen");
        // Settled: a later byte sequence that happens to be valid UTF-8 stays code page 850.
        pending.extend_from_slice("é".as_bytes());
        assert_eq!(d.take(&mut pending, no_system), "├®");
    }
}
