//! The agent's side of the wire: three POST routes, and a sorting of every failure into what
//! the agent should do about it ([`CallError`]).

use reqwest::{StatusCode, Url};
use serde::de::DeserializeOwned;
use std::fmt;
use std::time::Duration;
use upkeep_agent_protocol::{
    EnrollRequest, EnrollResponse, ErrorBody, Job, JobResult, OutputAck, OutputChunk, PollRequest,
    ResultAck,
};

/// Time limit of the calls that are not long polls.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Time limit of an output chunk: streaming must not hold up the job for long.
const OUTPUT_TIMEOUT: Duration = Duration::from_secs(10);

/// A long poll may be held `waitSeconds`; allow this much on top for the network and the
/// server's own scheduling before calling the server unreachable.
const POLL_SLACK: Duration = Duration::from_secs(15);

/// Why a call did not succeed, sorted by what the agent does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CallError {
    /// 401: the agent token (or enrollment key) is unknown or revoked. Re-enroll or wait.
    Unauthorized(String),
    /// 429: slow down, for `retry_after` when the server said.
    Throttled { retry_after: Option<Duration> },
    /// Another 4xx: repeating the same request will never help.
    Refused { status: u16, message: String },
    /// No answer, a 5xx, or an unreadable answer: try again later.
    Transient(String),
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unauthorized(message) => write!(f, "unauthorized (401): {message}"),
            Self::Throttled {
                retry_after: Some(after),
            } => write!(f, "throttled (429), retry after {after:?}"),
            Self::Throttled { retry_after: None } => write!(f, "throttled (429)"),
            Self::Refused { status, message } => write!(f, "refused ({status}): {message}"),
            Self::Transient(message) => write!(f, "{message}"),
        }
    }
}

/// A job as offered by a poll. A job this agent cannot parse (a newer server's kind) is kept
/// apart so that it can be answered with a `failed` result instead of poisoning the whole poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Offer {
    Job(Job),
    Unreadable {
        id: String,
        session_id: String,
        error: String,
    },
}

#[derive(Debug, Clone)]
pub(crate) struct Client {
    http: reqwest::Client,
    /// For vendors' installer downloads: HTTPS only (redirects too), never the agent token.
    vendor: reqwest::Client,
    base: Url,
}

impl Client {
    /// `max_wait_seconds` is the longest poll wait that will ever be asked for; the HTTP
    /// timeout must exceed it or every empty long poll would look like a dead server.
    pub(crate) fn new(server: &str, max_wait_seconds: u32) -> anyhow::Result<Self> {
        let base = Url::parse(server)
            .map_err(|e| anyhow::anyhow!("--server {server:?} is not a URL: {e}"))?;
        if base.cannot_be_a_base() || !matches!(base.scheme(), "http" | "https") {
            anyhow::bail!("--server {server:?} must be an http:// or https:// URL");
        }
        // HTTPS to the server goes through rustls with ring (installing it is idempotent).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(u64::from(max_wait_seconds)) + POLL_SLACK)
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("upkeep-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| anyhow::anyhow!("cannot set up the HTTP client: {}", error_chain(&e)))?;
        let vendor = reqwest::Client::builder()
            .https_only(true)
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("upkeep-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| anyhow::anyhow!("cannot set up the HTTP client: {}", error_chain(&e)))?;
        Ok(Self { http, vendor, base })
    }

    /// Starts fetching an installer from byte `offset` on (`Range: bytes=N-`): from the server
    /// (`GET /agent/v1/files/{sha256}` with the agent token), or from the vendor's `url`
    /// (HTTPS only, without the token). The answer's body is read by the caller, within
    /// `limit` in all.
    pub(crate) async fn file(
        &self,
        token: &str,
        sha256: &str,
        url: Option<&str>,
        offset: u64,
        limit: Duration,
    ) -> Result<reqwest::Response, CallError> {
        let request = match url {
            Some(u) => {
                let u = Url::parse(u).map_err(|e| CallError::Refused {
                    status: 0,
                    message: format!("the installer URL is not a URL: {e}"),
                })?;
                if u.scheme() != "https" {
                    return Err(CallError::Refused {
                        status: 0,
                        message: "installers are downloaded over https:// only".to_owned(),
                    });
                }
                self.vendor.get(u)
            }
            None => self
                .http
                .get(self.url(&["agent", "v1", "files", sha256]))
                .bearer_auth(token),
        };
        let mut request = request.timeout(limit);
        if offset > 0 {
            request = request.header(reqwest::header::RANGE, format!("bytes={offset}-"));
        }
        let response = request
            .send()
            .await
            .map_err(|e| CallError::Transient(error_chain(&e)))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let (status, retry_after) = (response.status(), retry_after(&response));
        let body = response.bytes().await.unwrap_or_default();
        Err(status_error(status, retry_after, &body))
    }

    pub(crate) async fn enroll(
        &self,
        request: &EnrollRequest,
    ) -> Result<EnrollResponse, CallError> {
        let url = self.url(&["agent", "v1", "enroll"]);
        let response = self
            .send(self.http.post(url).timeout(CALL_TIMEOUT).json(request))
            .await?;
        parse(&response)
    }

    pub(crate) async fn poll(
        &self,
        token: &str,
        request: &PollRequest,
    ) -> Result<Vec<Offer>, CallError> {
        #[derive(serde::Deserialize)]
        struct RawPoll {
            #[serde(default)]
            jobs: Vec<serde_json::Value>,
        }
        let url = self.url(&["agent", "v1", "poll"]);
        let response = self
            .send(self.http.post(url).bearer_auth(token).json(request))
            .await?;
        let raw: RawPoll = parse(&response)?;
        Ok(raw.jobs.into_iter().filter_map(offer).collect())
    }

    /// Any 2xx counts as delivered, even with an unreadable body: the server has the result,
    /// and sending it again could not change that.
    pub(crate) async fn send_result(
        &self,
        token: &str,
        job_id: &str,
        result: &JobResult,
    ) -> Result<ResultAck, CallError> {
        let url = self.url(&["agent", "v1", "jobs", job_id, "result"]);
        let response = self
            .send(
                self.http
                    .post(url)
                    .timeout(CALL_TIMEOUT)
                    .bearer_auth(token)
                    .json(result),
            )
            .await?;
        Ok(parse(&response).unwrap_or_else(|e| {
            tracing::warn!(
                job_id,
                "the server took the result but its answer was unreadable: {e}"
            );
            ResultAck { accepted: true }
        }))
    }

    /// Sends a piece of a running step's output. Any 2xx counts as delivered.
    pub(crate) async fn send_output(
        &self,
        token: &str,
        job_id: &str,
        chunk: &OutputChunk,
    ) -> Result<OutputAck, CallError> {
        let url = self.url(&["agent", "v1", "jobs", job_id, "output"]);
        let response = self
            .send(
                self.http
                    .post(url)
                    .timeout(OUTPUT_TIMEOUT)
                    .bearer_auth(token)
                    .json(chunk),
            )
            .await?;
        Ok(parse(&response).unwrap_or(OutputAck { accepted: true }))
    }

    /// Whether the server still wants a running job ([`JobStatus`]).
    pub(crate) async fn job_status(
        &self,
        token: &str,
        job_id: &str,
    ) -> Result<upkeep_agent_protocol::JobStatus, CallError> {
        let url = self.url(&["agent", "v1", "jobs", job_id]);
        let response = self
            .send(self.http.get(url).timeout(CALL_TIMEOUT).bearer_auth(token))
            .await?;
        parse(&response)
    }

    /// Joins segments to the base URL, percent-encoding each one (job ids are the server's).
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<Answer, CallError> {
        let response = request
            .send()
            .await
            .map_err(|e| CallError::Transient(error_chain(&e)))?;
        let status = response.status();
        let retry_after = retry_after(&response);
        let body = response
            .bytes()
            .await
            .map_err(|e| CallError::Transient(error_chain(&e)))?;
        if status.is_success() {
            return Ok(Answer {
                body: body.to_vec(),
            });
        }
        Err(status_error(status, retry_after, &body))
    }
}

fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// A failed answer, sorted by what to do about it.
fn status_error(status: StatusCode, retry_after: Option<Duration>, body: &[u8]) -> CallError {
    let message = error_message(status, body);
    match status {
        StatusCode::UNAUTHORIZED => CallError::Unauthorized(message),
        StatusCode::TOO_MANY_REQUESTS => CallError::Throttled { retry_after },
        StatusCode::REQUEST_TIMEOUT => CallError::Transient(format!("{status}: {message}")),
        s if s.is_client_error() => CallError::Refused {
            status: s.as_u16(),
            message,
        },
        s => CallError::Transient(format!("server error {}: {message}", s.as_u16())),
    }
}

/// A successful answer's body.
struct Answer {
    body: Vec<u8>,
}

fn parse<T: DeserializeOwned>(answer: &Answer) -> Result<T, CallError> {
    serde_json::from_slice(&answer.body)
        .map_err(|e| CallError::Transient(format!("unreadable answer from the server: {e}")))
}

fn offer(value: serde_json::Value) -> Option<Offer> {
    let field = |name: &str| value.get(name).and_then(|v| v.as_str()).map(str::to_owned);
    let (id, session_id) = (field("id"), field("sessionId").unwrap_or_default());
    match serde_json::from_value::<Job>(value) {
        Ok(job) => Some(Offer::Job(job)),
        Err(e) => match id {
            Some(id) => Some(Offer::Unreadable {
                id,
                session_id,
                error: e.to_string(),
            }),
            None => {
                tracing::error!("the server offered a job without an id; ignoring it: {e}");
                None
            }
        },
    }
}

/// The [`ErrorBody`] text when there is one, else the start of whatever came.
fn error_message(status: StatusCode, body: &[u8]) -> String {
    if let Ok(error) = serde_json::from_slice::<ErrorBody>(body) {
        return format!("{}: {}", error.code, error.error);
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return status
            .canonical_reason()
            .unwrap_or("no explanation")
            .to_owned();
    }
    text.chars().take(200).collect()
}

/// reqwest's own message names only the outermost layer ("error sending request"); the cause
/// ("connection refused") is what an operator needs.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_keep_a_path_prefix_and_encode_job_ids() -> anyhow::Result<()> {
        let client = Client::new("http://h:1/upkeep/", 25)?;
        assert_eq!(
            client.url(&["agent", "v1", "poll"]).as_str(),
            "http://h:1/upkeep/agent/v1/poll"
        );
        let client = Client::new("http://h:1", 25)?;
        assert_eq!(
            client
                .url(&["agent", "v1", "jobs", "a/b c", "result"])
                .as_str(),
            "http://h:1/agent/v1/jobs/a%2Fb%20c/result"
        );
        assert!(Client::new("not a url", 25).is_err());
        assert!(Client::new("ftp://h", 25).is_err());
        Ok(())
    }

    #[test]
    fn an_unknown_job_kind_becomes_an_unreadable_offer() {
        let value = serde_json::json!({"id": "j9", "sessionId": "s1", "leaseSeconds": 5, "kind": "teleport"});
        assert!(matches!(offer(value), Some(Offer::Unreadable { id, .. }) if id == "j9"));
        assert_eq!(offer(serde_json::json!({"kind": "reboot"})), None);
    }

    #[test]
    fn error_bodies_are_summarised() {
        let body = br#"{"code":"UNAUTHENTICATED","error":"unknown agent token"}"#;
        assert_eq!(
            error_message(StatusCode::UNAUTHORIZED, body),
            "UNAUTHENTICATED: unknown agent token"
        );
        assert_eq!(error_message(StatusCode::BAD_GATEWAY, b""), "Bad Gateway");
    }
}
