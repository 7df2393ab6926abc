//! Streaming a running step's output to the server (`POST /agent/v1/jobs/{jobId}/output`), so
//! a person watching the session sees it before the script ends.
//!
//! Best effort by design: the job's result carries the whole (capped) output and is what the
//! server stores, so a chunk that cannot be delivered is retried while the script runs and for
//! [`FINAL_FLUSH`] after, then given up; it never holds up the job or its result.

use crate::client::{CallError, Client};
use crate::runner::Tee;
use std::collections::VecDeque;
use std::time::{Duration, Instant};
use upkeep_agent_protocol::{MAX_CHUNK_BYTES, OutputChunk, OutputStream, PROTOCOL_VERSION};

/// How often new output is sent while a script runs.
pub(crate) const STREAM_EVERY: Duration = Duration::from_millis(500);

/// How long the last output may take to go out once the script ended, before the result.
pub(crate) const FINAL_FLUSH: Duration = Duration::from_secs(3);

/// One job's output stream: numbered chunks, each sent until the server answers.
pub(crate) struct Streamer<'a> {
    client: &'a Client,
    token: &'a str,
    job_id: &'a str,
    /// The last `seq` given to a chunk; a chunk keeps its `seq` across retries.
    seq: u64,
    queue: VecDeque<OutputChunk>,
    paused_until: Option<Instant>,
    /// The server refused streaming for good (401 or another final 4xx).
    gave_up: bool,
}

impl<'a> Streamer<'a> {
    pub(crate) fn new(client: &'a Client, token: &'a str, job_id: &'a str) -> Self {
        Self {
            client,
            token,
            job_id,
            seq: 0,
            queue: VecDeque::new(),
            paused_until: None,
            gave_up: false,
        }
    }

    /// Sends what the script wrote since the last call. Cancel-safe: a chunk leaves the queue
    /// only once the server answered, and is sent again with the same `seq` otherwise.
    pub(crate) async fn flush(&mut self, tee: &Tee) {
        for stream in [OutputStream::Stdout, OutputStream::Stderr] {
            let text = tee.take(stream);
            if self.gave_up {
                continue;
            }
            for piece in pieces(&text, MAX_CHUNK_BYTES) {
                self.seq += 1;
                self.queue.push_back(OutputChunk {
                    protocol_version: PROTOCOL_VERSION,
                    seq: self.seq,
                    stream,
                    chunk: piece.to_owned(),
                });
            }
        }
        while let Some(chunk) = self.queue.front() {
            if self.paused_until.is_some_and(|t| Instant::now() < t) {
                return;
            }
            match self
                .client
                .send_output(self.token, self.job_id, chunk)
                .await
            {
                Ok(_) => {
                    self.queue.pop_front();
                }
                Err(CallError::Throttled { retry_after }) => {
                    self.paused_until =
                        Some(Instant::now() + retry_after.unwrap_or(Duration::from_secs(1)));
                    return;
                }
                Err(CallError::Transient(message)) => {
                    tracing::debug!(job_id = self.job_id, "output not sent yet: {message}");
                    return;
                }
                Err(e @ (CallError::Unauthorized(_) | CallError::Refused { .. })) => {
                    tracing::warn!(
                        job_id = self.job_id,
                        "the server does not take this job's output ({e}); the result will carry it"
                    );
                    self.gave_up = true;
                    self.queue.clear();
                    return;
                }
            }
        }
    }
}

/// `text` in pieces of at most `max` bytes, never splitting a character.
fn pieces(text: &str, max: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let mut end = rest.len().min(max);
        while !rest.is_char_boundary(end) {
            end -= 1;
        }
        let (head, tail) = rest.split_at(end);
        out.push(head);
        rest = tail;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_respect_the_size_and_characters() {
        assert_eq!(pieces("", 4), Vec::<&str>::new());
        assert_eq!(pieces("abcdefghi", 4), vec!["abcd", "efgh", "i"]);
        assert_eq!(pieces("aéé", 4), vec!["aé", "é"]);
    }
}
