//! What a script said: the stdout and stderr of install, upgrade, uninstall and set scripts,
//! capped and with secret parameter values masked before anything stores, streams or shows
//! them. Pure: no I/O.
//!
//! Secrets: the values of a task's SECRET parameters (opened by the server from their sealed
//! form, [`Secrets::with`]) are masked whatever their length; besides, every plain parameter
//! value of [`MIN_SECRET_CHARS`] or more characters counts as a secret too (free-form
//! parameters often hold licence keys) and is replaced by [`MASK`]. Shorter plain values
//! ("yes", "x64") are too common in ordinary output to mask.

use crate::domain::{Id, Time};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use upkeep_agent_protocol::{MAX_OUTPUT_BYTES, ScriptOutcome, truncate_utf8};

/// What a secret looks like in stored and streamed output.
pub const MASK: &str = "••••••";
/// Parameter values at least this many characters long are masked.
pub const MIN_SECRET_CHARS: usize = 6;
/// Most bytes of one job's streamed output (both streams) shown in the session log: the log
/// is for following a script, the action's `output` keeps the whole of it, and the session's
/// log must stay small (every session query may read it).
pub const MAX_STREAMED_BYTES: usize = 16 * 1024;
/// Longest piece of output in one log line.
pub const MAX_LOG_PIECE: usize = 900;

/// Appended to a stream that was cut at [`MAX_OUTPUT_BYTES`].
pub const CUT_MARKER: &str = "\n[… output cut: only the first 64 KiB are kept]";

/// The secret values of one deployment's parameters, longest first (so a secret containing
/// another is masked whole).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Secrets(Vec<String>);

impl Secrets {
    /// The plain values of `parameters` long enough to mask (sealed ones are ciphertext: the
    /// caller adds their opened values with [`Secrets::with`]).
    pub fn of(parameters: &BTreeMap<String, String>) -> Secrets {
        let v: Vec<String> = parameters
            .values()
            .filter(|v| v.chars().count() >= MIN_SECRET_CHARS && !crate::params::is_sealed(v))
            .cloned()
            .collect();
        Secrets(v).sorted()
    }

    /// These secrets and `declared` ones (SECRET parameter values), masked whatever their
    /// length (they were checked to be at least `params::MIN_SECRET_CHARS` long when written).
    pub fn with(mut self, declared: impl IntoIterator<Item = String>) -> Secrets {
        self.0
            .extend(declared.into_iter().filter(|v| !v.is_empty()));
        self.sorted()
    }

    fn sorted(mut self) -> Secrets {
        self.0
            .sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        self.0.dedup();
        self
    }

    /// These secrets but `shown` values (see `PlanItem::shown_values`); call it before
    /// [`Secrets::with`] adds the SECRET values, which stay masked whatever else is shown.
    pub fn without(mut self, shown: &[String]) -> Secrets {
        self.0.retain(|v| !shown.contains(v));
        self
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn values(&self) -> &[String] {
        &self.0
    }

    /// Every whole occurrence of a secret replaced by [`MASK`].
    pub fn mask(&self, text: &str) -> String {
        let mut out = text.to_string();
        for s in &self.0 {
            if out.contains(s.as_str()) {
                out = out.replace(s.as_str(), MASK);
            }
        }
        out
    }

    /// Where `text` ends with the beginning of a secret (a secret cut by a chunk boundary or
    /// by the output cap): the byte index of the earliest such start.
    pub fn partial_tail(&self, text: &str) -> Option<usize> {
        let mut longest = 0;
        for s in &self.0 {
            for k in (longest + 1..s.len()).rev() {
                if s.is_char_boundary(k) && text.ends_with(&s[..k]) {
                    longest = k;
                    break;
                }
            }
        }
        (longest > 0).then(|| text.len() - longest)
    }

    /// [`mask`](Self::mask), plus a trailing beginning of a secret (for text that was cut).
    fn mask_cut(&self, text: &str) -> String {
        let mut masked = self.mask(text);
        if let Some(i) = self.partial_tail(&masked) {
            masked.truncate(i);
            masked.push_str(MASK);
        }
        masked
    }

    /// The outcome with secrets masked in its texts (for result messages and logs).
    pub fn mask_outcome(&self, o: &ScriptOutcome) -> ScriptOutcome {
        if self.is_empty() {
            return o.clone();
        }
        ScriptOutcome {
            stdout: self.mask(&o.stdout),
            stderr: self.mask(&o.stderr),
            error: o.error.as_deref().map(|e| self.mask(e)),
            ..o.clone()
        }
    }
}

/// A change script's output as stored beside its action (`MaintenanceAction.output`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ActionOutput {
    pub stdout: String,
    pub stderr: String,
    pub exit_code: Option<i32>,
    /// True when stdout or stderr was cut (each then ends with [`CUT_MARKER`]).
    pub truncated: bool,
}

impl ActionOutput {
    /// Masks, caps each stream at [`MAX_OUTPUT_BYTES`] and marks what was cut. The agent cuts
    /// at the same size and says only that *some* stream was cut; a stream that reaches the cap
    /// is the one.
    pub fn from_outcome(o: &ScriptOutcome, secrets: &Secrets) -> ActionOutput {
        // Lossy UTF-8 and a cut on a character boundary leave a cut stream up to 3 bytes short.
        let full = |s: &str| s.len() + 3 >= MAX_OUTPUT_BYTES;
        let mut cut_out = o.truncated && full(&o.stdout);
        let cut_err = o.truncated && full(&o.stderr);
        if o.truncated && !cut_out && !cut_err {
            cut_out = true;
        }
        let stream = |text: &str, cut: bool| {
            // The cap applies to what the script wrote (a misbehaving agent may send more);
            // masking afterwards never shows part of a secret at the cut.
            let mut raw = text.to_string();
            let cut = truncate_utf8(&mut raw, MAX_OUTPUT_BYTES) || cut;
            let mut t = if cut {
                secrets.mask_cut(&raw)
            } else {
                secrets.mask(&raw)
            };
            if cut {
                t.push_str(CUT_MARKER);
            }
            (t, cut)
        };
        let (stdout, a) = stream(&o.stdout, cut_out);
        let (stderr, b) = stream(&o.stderr, cut_err);
        ActionOutput {
            stdout,
            stderr,
            exit_code: o.exit_code,
            truncated: a || b,
        }
    }
}

/// The stored output of one action's last change script, keyed (session, action index) and
/// written in the transaction of the step result that carried it: the session record, which
/// every step rewrites, stays small.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OutputRecord {
    pub session_id: Id,
    pub tenant_id: Id,
    pub action: u32,
    pub action_id: Id,
    pub at: Time,
    pub output: ActionOutput,
}

pub fn output_key(session: Id, action: u32) -> Vec<u8> {
    let mut k = session.as_bytes().to_vec();
    k.extend_from_slice(&action.to_be_bytes());
    k
}

/// `text` as log-line pieces of at most [`MAX_LOG_PIECE`] bytes: whole lines where they fit,
/// long lines cut on character boundaries. Trailing line breaks are dropped.
pub fn log_pieces(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let mut line = line.trim_end_matches('\r');
        while line.len() > MAX_LOG_PIECE {
            let mut end = MAX_LOG_PIECE;
            while !line.is_char_boundary(end) {
                end -= 1;
            }
            if !current.is_empty() {
                out.push(std::mem::take(&mut current));
            }
            out.push(line[..end].to_string());
            line = &line[end..];
        }
        if !current.is_empty() && current.len() + 1 + line.len() > MAX_LOG_PIECE {
            out.push(std::mem::take(&mut current));
        }
        if !current.is_empty() {
            current.push('\n');
        }
        current.push_str(line);
    }
    if !current.trim().is_empty() {
        out.push(current);
    }
    out
}

/// Masks a stream that arrives in pieces: a secret split across two pieces is masked too,
/// because a tail that may be the beginning of a secret is held back until the next piece.
#[derive(Debug, Clone, Default)]
pub struct StreamMask {
    held: String,
}

impl StreamMask {
    /// The masked text that may be shown now.
    pub fn push(&mut self, piece: &str, secrets: &Secrets) -> String {
        let mut text = std::mem::take(&mut self.held);
        text.push_str(piece);
        let mut masked = secrets.mask(&text);
        if let Some(i) = secrets.partial_tail(&masked) {
            self.held = masked.split_off(i);
        }
        masked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets(values: &[&str]) -> Secrets {
        Secrets::of(
            &values
                .iter()
                .enumerate()
                .map(|(i, v)| (format!("p{i}"), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn values_of_six_characters_or_more_are_masked() {
        let s = secrets(&["hunter2!", "abc", "x64"]);
        assert_eq!(s.mask("pw=hunter2! arch=x64 abc"), "pw=•••••• arch=x64 abc");
    }

    #[test]
    fn declared_secrets_are_masked_whatever_their_length_and_sealed_values_are_not_secrets() {
        let params = BTreeMap::from([
            (
                "pw".to_string(),
                format!("{}AAAAAAAA", crate::params::SEALED_PREFIX),
            ),
            ("key".to_string(), "licence-123".to_string()),
        ]);
        let s = Secrets::of(&params).with(["pin7".to_string(), String::new()]);
        assert_eq!(
            s.mask("pin7 licence-123 upkeep-sealed"),
            "•••••• •••••• upkeep-sealed"
        );
    }

    #[test]
    fn shown_values_are_not_masked_but_a_secret_equal_to_one_still_is() {
        let params = BTreeMap::from([
            ("zone".to_string(), "Europe/Berlin".to_string()),
            ("key".to_string(), "licence-123".to_string()),
        ]);
        let shown = ["Europe/Berlin".to_string()];
        let s = Secrets::of(&params).without(&shown);
        assert_eq!(s.mask("Europe/Berlin licence-123"), "Europe/Berlin ••••••");
        let s = Secrets::of(&params)
            .without(&shown)
            .with(["Europe/Berlin".to_string()]);
        assert_eq!(s.mask("Europe/Berlin"), "••••••");
    }

    #[test]
    fn log_pieces_keep_lines_together_and_cut_long_ones() {
        assert_eq!(log_pieces("a\nb\n"), vec!["a\nb"]);
        assert_eq!(log_pieces("\n"), Vec::<String>::new());
        let long = "x".repeat(MAX_LOG_PIECE + 10);
        let pieces = log_pieces(&format!("head\n{long}\ntail"));
        assert_eq!(pieces.len(), 3, "{pieces:?}");
        assert_eq!(pieces[0], "head");
        assert_eq!(pieces[1].len(), MAX_LOG_PIECE);
        assert_eq!(pieces[2], format!("{}\ntail", "x".repeat(10)));
        assert!(
            log_pieces(&"ab\n".repeat(2000))
                .iter()
                .all(|p| p.len() <= MAX_LOG_PIECE)
        );
    }

    #[test]
    fn a_secret_split_across_pieces_is_masked() {
        let s = secrets(&["s3cr3t-value"]);
        let mut m = StreamMask::default();
        let a = m.push("token: s3cr", &s);
        let b = m.push("3t-value done\n", &s);
        assert_eq!(a, "token: ");
        assert_eq!(b, "•••••• done\n");
        // A piece that only looked like a secret's start is shown with the next one.
        let c = m.push("s3c", &s);
        let d = m.push("ond\n", &s);
        assert_eq!(format!("{c}{d}"), "s3cond\n");
    }

    #[test]
    fn long_output_is_cut_with_a_marker_and_a_cut_secret_is_masked() {
        let s = secrets(&["topsecret"]);
        let mut stdout = "a".repeat(MAX_OUTPUT_BYTES - 3);
        stdout.push_str("top");
        let o = ScriptOutcome {
            exit_code: Some(0),
            stdout,
            stderr: "topsecret failed".into(),
            truncated: true,
            ..Default::default()
        };
        let out = ActionOutput::from_outcome(&o, &s);
        assert!(out.truncated);
        assert!(out.stdout.ends_with(&format!("{MASK}{CUT_MARKER}")));
        assert!(!out.stdout.contains("top"));
        assert_eq!(out.stderr, "•••••• failed");
        assert_eq!(out.exit_code, Some(0));
    }
}
