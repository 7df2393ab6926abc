//! A stand-in for the server's agent routes, for the agent's own tests: just enough HTTP/1.1
//! (one request per connection) for reqwest, and a state the tests steer and inspect.

use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use upkeep_agent_protocol::{
    EnrollRequest, EnrollResponse, ErrorBody, JobResult, PollRequest, ResultAck,
};

pub(crate) const GOOD_KEY: &str = "good-key";

#[derive(Debug, Default)]
pub(crate) struct FakeState {
    pub(crate) enrollments: Vec<EnrollRequest>,
    /// Tokens the server accepts; clearing it revokes every agent.
    pub(crate) tokens: HashSet<String>,
    pub(crate) polls: Vec<PollRequest>,
    pub(crate) unauthorized_calls: usize,
    /// Job batches, one handed out per poll, raw so tests can offer malformed jobs.
    pub(crate) queued: VecDeque<Vec<serde_json::Value>>,
    /// Answer 503 to results (the server is "down" for them).
    pub(crate) results_down: bool,
    pub(crate) refused_results: usize,
    pub(crate) results: Vec<(String, JobResult)>,
    /// When set, whether this path existed as each result arrived.
    pub(crate) watch: Option<PathBuf>,
    pub(crate) watched: Vec<bool>,
}

pub(crate) struct FakeServer {
    pub(crate) url: String,
    state: Arc<Mutex<FakeState>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeServer {
    pub(crate) async fn start() -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let state = Arc::new(Mutex::new(FakeState::default()));
        let shared = Arc::clone(&state);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, Arc::clone(&shared)));
            }
        });
        Ok(Self { url, state, task })
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, FakeState> {
        lock(&self.state)
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A poisoned lock only means another test thread panicked; its data is still what we need.
fn lock(state: &Mutex<FakeState>) -> MutexGuard<'_, FakeState> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

struct Request {
    path: String,
    token: Option<String>,
    body: Vec<u8>,
}

async fn serve(mut stream: TcpStream, state: Arc<Mutex<FakeState>>) {
    let Some(request) = read_request(&mut stream).await else {
        return;
    };
    let (status, body) = respond(&request, &state).await;
    let reason = match status {
        200 => "OK",
        401 => "Unauthorized",
        503 => "Service Unavailable",
        _ => "Other",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(&body).await;
    let _ = stream.shutdown().await;
}

async fn read_request(stream: &mut TcpStream) -> Option<Request> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.lines();
    let path = lines.next()?.split_whitespace().nth(1)?.to_owned();
    let mut length = 0;
    let mut token = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => length = value.trim().parse().ok()?,
            "authorization" => token = value.trim().strip_prefix("Bearer ").map(str::to_owned),
            _ => {}
        }
    }
    let mut body = buf[head_end..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some(Request { path, token, body })
}

fn json(status: u16, value: &impl serde::Serialize) -> (u16, Vec<u8>) {
    (status, serde_json::to_vec(value).unwrap_or_default())
}

fn error(status: u16, code: &str, text: &str) -> (u16, Vec<u8>) {
    json(
        status,
        &ErrorBody {
            code: code.to_owned(),
            error: text.to_owned(),
        },
    )
}

async fn respond(request: &Request, shared: &Mutex<FakeState>) -> (u16, Vec<u8>) {
    if request.path == "/agent/v1/enroll" {
        let Ok(enroll) = serde_json::from_slice::<EnrollRequest>(&request.body) else {
            return error(400, "BAD_REQUEST", "not an enroll request");
        };
        let mut state = lock(shared);
        if enroll.enrollment_key != GOOD_KEY {
            return error(401, "UNAUTHENTICATED", "unknown enrollment key");
        }
        state.enrollments.push(enroll);
        let agent_token = format!("token-{}", state.enrollments.len());
        state.tokens.insert(agent_token.clone());
        return json(
            200,
            &EnrollResponse {
                computer_id: "c-1".into(),
                agent_token,
                poll_wait_seconds: 25,
            },
        );
    }

    {
        let mut state = lock(shared);
        if !request
            .token
            .as_ref()
            .is_some_and(|t| state.tokens.contains(t))
        {
            state.unauthorized_calls += 1;
            return error(401, "UNAUTHENTICATED", "unknown agent token");
        }
    }

    if request.path == "/agent/v1/poll" {
        let Ok(poll) = serde_json::from_slice::<PollRequest>(&request.body) else {
            return error(400, "BAD_REQUEST", "not a poll");
        };
        let jobs = {
            let mut state = lock(shared);
            state.polls.push(poll);
            state.queued.pop_front()
        };
        let jobs = match jobs {
            Some(jobs) => jobs,
            None => {
                // A short stand-in for the long poll.
                tokio::time::sleep(Duration::from_millis(50)).await;
                Vec::new()
            }
        };
        return json(200, &serde_json::json!({ "jobs": jobs }));
    }

    let job_id = request
        .path
        .strip_prefix("/agent/v1/jobs/")
        .and_then(|rest| rest.strip_suffix("/result"));
    if let Some(job_id) = job_id {
        let Ok(result) = serde_json::from_slice::<JobResult>(&request.body) else {
            return error(422, "BAD_REQUEST", "not a result");
        };
        let mut state = lock(shared);
        if state.results_down {
            state.refused_results += 1;
            return error(503, "UNAVAILABLE", "down for the test");
        }
        if let Some(watch) = state.watch.clone() {
            state.watched.push(watch.exists());
        }
        let accepted = !state.results.iter().any(|(id, _)| id == job_id);
        state.results.push((job_id.to_owned(), result));
        return json(200, &ResultAck { accepted });
    }
    error(404, "NOT_FOUND", "no such route")
}
