//! Architecture invariant: every operation on an open socket runs as the actor its credential
//! resolves to at that moment (`authenticate`, per operation and on every credential change);
//! a socket whose credential ended closes with 4403.
//!
//! One GraphQL WebSocket connection (`graphql-transport-ws` and legacy `graphql-ws`), with the
//! bounds an internet-facing server needs around async-graphql's protocol machine:
//!
//! - a client that sends no `connection_init` within [`WsLimits::init_timeout`] is closed
//!   (`4408`); frames before it are small ([`PRE_AUTH_MAX_BYTES`]);
//! - a bad credential at `connection_init` closes with `4401`;
//! - the credential is checked again for every operation and whenever credentials change
//!   anywhere (a revoked key, a deleted or disabled user, a password change, a moved test
//!   clock) and every [`RECHECK_EVERY`] (expiry): once it no longer holds, the socket closes
//!   with `4403` and its live subscriptions end with it;
//! - at most [`MAX_SUBSCRIPTIONS`] operations run at once on one socket.
//!
//! Every operation runs with the actor that the credential resolves to *now* (a role change
//! applies to the next operation).

use super::{authenticate, shared_schema};
use crate::auth::Actor;
use crate::error::ApiError;
use crate::services::App;
use async_graphql::Data;
use async_graphql::http::{ClientMessage, WebSocketProtocols, WsMessage};
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::{SinkExt, StreamExt};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Largest frame a client may send before it has authenticated.
pub const PRE_AUTH_MAX_BYTES: usize = 64 * 1024;
/// Frames a client may send before `connection_init` (the init itself included).
pub const PRE_AUTH_MAX_FRAMES: u32 = 8;
/// Largest frame an authenticated client may send (the HTTP body limit).
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;
/// Operations one socket may run at once.
pub const MAX_SUBSCRIPTIONS: usize = 100;
/// How often a connection's credential is checked again without any other cause (expiry).
pub const RECHECK_EVERY: Duration = Duration::from_secs(5);
/// Longest operation id a client may use.
pub const MAX_ID_BYTES: usize = 128;
/// How long one frame to the client may take to send; a client that does not read is closed.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Client messages waiting for the protocol machine; a client that floods past it is closed.
const QUEUE: usize = 64;

/// Close codes of graphql-transport-ws (CONTRACT §11).
pub mod close {
    pub const UNAUTHORIZED: u16 = 4401;
    pub const FORBIDDEN: u16 = 4403;
    pub const INIT_TIMEOUT: u16 = 4408;
    pub const SUBSCRIBER_EXISTS: u16 = 4409;
    pub const TOO_BIG: u16 = 1009;
    pub const POLICY: u16 = 1008;
    pub const GOING_AWAY: u16 = 1001;
    pub const INTERNAL: u16 = 1011;
}

/// What the gate decided about one client frame (short-lived: the size of a forwarded
/// request is no reason to box it).
#[allow(clippy::large_enum_variant)]
enum Gate {
    Forward(ClientMessage),
    Reply(String),
    Close(u16, String),
    Ignore,
}

/// The credential a connection authenticated with, and what it resolves to.
struct Conn {
    protocol: WebSocketProtocols,
    credential: Option<String>,
    /// The actor handed to async-graphql's `on_connection_init` (it runs after the gate).
    init_actor: Arc<Mutex<Option<Actor>>>,
    active: HashSet<String>,
    /// Frames received before `connection_init` (pings): a few are normal.
    pre_auth_frames: u32,
}

/// Serves one upgraded socket until either side ends it.
pub async fn serve(
    app: Arc<App>,
    socket: WebSocket,
    protocol: WebSocketProtocols,
    peer: std::net::SocketAddr,
) {
    let (mut sink, mut source) = socket.split();
    let (tx, rx) = tokio::sync::mpsc::channel::<serde_json::Result<ClientMessage>>(QUEUE);
    let init_actor: Arc<Mutex<Option<Actor>>> = Arc::default();
    let mut conn = Conn {
        protocol,
        credential: None,
        init_actor: init_actor.clone(),
        active: HashSet::new(),
        pre_auth_frames: 0,
    };
    let mut machine = protocol_machine(app.clone(), init_actor, rx, protocol, peer);
    let init_deadline = tokio::time::sleep(app.config.ws_init_timeout());
    tokio::pin!(init_deadline);
    let mut credentials = app.credentials_changed.subscribe();
    let mut recheck = tokio::time::interval(RECHECK_EVERY);
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let end: Option<(u16, String)> = loop {
        tokio::select! {
            frame = source.next() => {
                let Some(Ok(frame)) = frame else { break None };
                match gate(&app, &mut conn, frame).await {
                    Gate::Forward(m) => {
                        if tx.try_send(Ok(m)).is_err() {
                            break Some((close::POLICY, "too many messages in flight".into()));
                        }
                    }
                    Gate::Reply(text) => {
                        if !send_within(&mut sink, Message::Text(text.into())).await {
                            break None;
                        }
                    }
                    Gate::Close(code, reason) => break Some((code, reason)),
                    Gate::Ignore => {}
                }
            }
            out = machine.next() => match out {
                None => break None,
                Some(WsMessage::Text(text)) => {
                    conn.note_server_message(&text);
                    match send_burst(&mut sink, &mut machine, &mut conn, text).await {
                        Burst::Sent => {}
                        Burst::Failed => break None,
                        Burst::Close(code, reason) => break Some((code, reason)),
                    }
                }
                Some(WsMessage::Close(code, reason)) => break Some((code, reason)),
            },
            _ = &mut init_deadline, if conn.credential.is_none() => {
                break Some((close::INIT_TIMEOUT, "Connection initialisation timeout".into()));
            }
            changed = credentials.changed(), if conn.credential.is_some() => {
                if changed.is_err() {
                    break Some((close::GOING_AWAY, "server shutting down".into()));
                }
                if let Err(end) = conn.recheck(&app).await {
                    break Some(end);
                }
            }
            _ = recheck.tick(), if conn.credential.is_some() => {
                if let Err(end) = conn.recheck(&app).await {
                    break Some(end);
                }
            }
            _ = app.shutdown.cancelled() => break Some((close::GOING_AWAY, "server shutting down".into())),
        }
    };
    if let Some((code, reason)) = end {
        let _ = send_within(&mut sink, close_frame(code, reason)).await;
    }
    let _ = tokio::time::timeout(SEND_TIMEOUT, sink.close()).await;
}

/// async-graphql's protocol machine over the frames the gate lets through; `connection_init`
/// gets the actor the gate authenticated.
fn protocol_machine(
    app: Arc<App>,
    init_actor: Arc<Mutex<Option<Actor>>>,
    rx: tokio::sync::mpsc::Receiver<serde_json::Result<ClientMessage>>,
    protocol: WebSocketProtocols,
    peer: std::net::SocketAddr,
) -> impl futures_util::Stream<Item = WsMessage> + Unpin {
    let init_app = app;
    async_graphql::http::WebSocket::from_message_stream(
        shared_schema().clone(),
        tokio_stream::wrappers::ReceiverStream::new(rx),
        protocol,
    )
    .on_connection_init(move |_payload| async move {
        // The gate authenticated the credential before it let `connection_init` through.
        let actor = init_actor
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .ok_or_else(|| async_graphql::Error::new("UNAUTHENTICATED"))?;
        let mut data = Data::default();
        data.insert(init_app);
        data.insert(actor);
        data.insert(super::ClientAddr(peer));
        Ok(data)
    })
}

/// A close frame; the reason is cut to fit (at most 123 bytes on the wire).
fn close_frame(code: u16, mut reason: String) -> Message {
    if reason.len() > 120 {
        let mut cut = 120;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
    }
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
}

/// Most frames one write carries (see [`send_burst`]).
const BURST: usize = 64;

enum Burst {
    Sent,
    Failed,
    /// The machine asked to close after the frames sent.
    Close(u16, String),
}

/// Sends `first` and every further frame the protocol machine has ready right now (a step's
/// events reach a subscriber together: up to a dozen), in one write and one flush instead of
/// a write per frame; at most [`BURST`] frames, within [`SEND_TIMEOUT`]. The frames and their
/// order are those of sending each alone.
async fn send_burst(
    sink: &mut futures_util::stream::SplitSink<WebSocket, Message>,
    machine: &mut (impl futures_util::Stream<Item = WsMessage> + Unpin),
    conn: &mut Conn,
    first: String,
) -> Burst {
    let mut close = None;
    let write = async {
        sink.feed(Message::Text(first.into())).await?;
        for _ in 1..BURST {
            match futures_util::FutureExt::now_or_never(machine.next()) {
                Some(Some(WsMessage::Text(text))) => {
                    conn.note_server_message(&text);
                    sink.feed(Message::Text(text.into())).await?;
                }
                Some(Some(WsMessage::Close(code, reason))) => {
                    close = Some((code, reason));
                    break;
                }
                // Nothing ready yet, or the machine ended (the loop sees that next).
                Some(None) | None => break,
            }
        }
        sink.flush().await
    };
    match tokio::time::timeout(SEND_TIMEOUT, write).await {
        Ok(Ok(())) => match close {
            Some((code, reason)) => Burst::Close(code, reason),
            None => Burst::Sent,
        },
        _ => Burst::Failed,
    }
}

/// Sends one frame, giving up after [`SEND_TIMEOUT`]: a client that stops reading (its TCP
/// window full) must not hold the connection, its slot and its deadlines forever.
async fn send_within(
    sink: &mut futures_util::stream::SplitSink<WebSocket, Message>,
    m: Message,
) -> bool {
    matches!(
        tokio::time::timeout(SEND_TIMEOUT, sink.send(m)).await,
        Ok(Ok(()))
    )
}

/// The credential of a `connection_init` payload: `{"Authorization": "Bearer …"}` or
/// `{"headers": {"Authorization": "Bearer …"}}` (either spelling of the key).
fn init_credential(payload: Option<&serde_json::Value>) -> Option<String> {
    let p = payload?;
    let pick = |v: &serde_json::Value| {
        v.get("Authorization")
            .or_else(|| v.get("authorization"))
            .and_then(|v| v.as_str())
            .map(String::from)
    };
    pick(p).or_else(|| p.get("headers").and_then(pick))
}

async fn gate(app: &App, conn: &mut Conn, frame: Message) -> Gate {
    let bytes: &[u8] = match &frame {
        Message::Text(t) => t.as_bytes(),
        Message::Binary(b) => b,
        Message::Close(_) => return Gate::Close(1000, String::new()),
        Message::Ping(_) | Message::Pong(_) => return Gate::Ignore,
    };
    if conn.credential.is_none() {
        conn.pre_auth_frames += 1;
        if conn.pre_auth_frames > PRE_AUTH_MAX_FRAMES {
            return Gate::Close(
                close::POLICY,
                "too many messages before connection_init".into(),
            );
        }
    }
    if conn.credential.is_none() && bytes.len() > PRE_AUTH_MAX_BYTES {
        return Gate::Close(
            close::TOO_BIG,
            format!("messages before connection_init are at most {PRE_AUTH_MAX_BYTES} bytes"),
        );
    }
    let message = match ClientMessage::from_bytes(bytes) {
        Ok(m) => m,
        // The protocol machine closes on it with the parse error.
        Err(_) => return Gate::Close(4400, "invalid message".into()),
    };
    match message {
        ClientMessage::ConnectionInit { payload } => gate_init(app, conn, payload.as_ref()).await,
        ClientMessage::Start { id, payload } => gate_start(app, conn, id, payload).await,
        ClientMessage::Stop { id } => {
            conn.active.remove(&id);
            Gate::Forward(ClientMessage::Stop { id })
        }
        other => Gate::Forward(other),
    }
}

/// `connection_init`: authenticates the credential it carries, once per connection.
async fn gate_init(app: &App, conn: &mut Conn, payload: Option<&serde_json::Value>) -> Gate {
    if conn.credential.is_some() {
        return Gate::Close(4429, "Too many initialisation requests".into());
    }
    let credential = init_credential(payload).unwrap_or_default();
    match authenticate(app, Some(&credential)).await {
        Ok(Some(actor)) => {
            *conn.init_actor.lock().unwrap_or_else(|e| e.into_inner()) = Some(actor);
            conn.credential = Some(credential);
            Gate::Forward(ClientMessage::ConnectionInit { payload: None })
        }
        Ok(None) => Gate::Close(
            close::UNAUTHORIZED,
            "connection_init must carry Authorization: Bearer <token or API key>".into(),
        ),
        Err(e) => Gate::Close(close::UNAUTHORIZED, e.to_string()),
    }
}

/// `subscribe`/`start`: runs as the actor the credential resolves to now, within the
/// connection's bounds (id length, no duplicate id, operation cap).
async fn gate_start(
    app: &App,
    conn: &mut Conn,
    id: String,
    payload: async_graphql::Request,
) -> Gate {
    let Some(credential) = conn.credential.as_deref() else {
        return Gate::Close(close::UNAUTHORIZED, "Unauthorized".into());
    };
    let actor = match authenticate(app, Some(credential)).await {
        Ok(Some(actor)) => actor,
        Ok(None) => return Gate::Close(close::FORBIDDEN, "the credential ended".into()),
        Err(e) => return ended(e),
    };
    if id.len() > MAX_ID_BYTES {
        return Gate::Close(
            4400,
            format!("operation ids are at most {MAX_ID_BYTES} bytes"),
        );
    }
    if conn.active.contains(&id) {
        return Gate::Close(
            close::SUBSCRIBER_EXISTS,
            format!("Subscriber for {id} already exists"),
        );
    }
    if conn.active.len() >= MAX_SUBSCRIPTIONS {
        return Gate::Reply(conn.error_message(
            &id,
            &format!("at most {MAX_SUBSCRIPTIONS} operations may run on one connection"),
        ));
    }
    conn.active.insert(id.clone());
    Gate::Forward(ClientMessage::Start {
        id,
        payload: payload.data(actor),
    })
}

/// The close that ends a connection whose credential no longer holds.
fn ended(e: ApiError) -> Gate {
    match e {
        ApiError::Unauthenticated(m) => Gate::Close(close::FORBIDDEN, m),
        _ => Gate::Close(close::INTERNAL, "internal error".into()),
    }
}

impl Conn {
    async fn recheck(&self, app: &App) -> Result<(), (u16, String)> {
        let Some(credential) = self.credential.as_deref() else {
            return Ok(());
        };
        match authenticate(app, Some(credential)).await {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err((close::FORBIDDEN, "the credential ended".into())),
            Err(e) => match ended(e) {
                Gate::Close(code, reason) => Err((code, reason)),
                _ => Ok(()),
            },
        }
    }

    /// Forgets operations the server completed (or failed), so they no longer count.
    fn note_server_message(&mut self, text: &str) {
        if !(text.starts_with(r#"{"type":"complete""#) || text.starts_with(r#"{"type":"error""#)) {
            return;
        }
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(text)
            && let Some(id) = v.get("id").and_then(|i| i.as_str())
        {
            self.active.remove(id);
        }
    }

    fn error_message(&self, id: &str, message: &str) -> String {
        let error =
            serde_json::json!({ "message": message, "extensions": { "code": "BAD_USER_INPUT" } });
        let payload = match self.protocol {
            WebSocketProtocols::GraphQLWS => serde_json::json!([error]),
            WebSocketProtocols::SubscriptionsTransportWS => error,
        };
        serde_json::json!({ "type": "error", "id": id, "payload": payload }).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::init_credential;
    use serde_json::json;

    #[test]
    fn credential_from_either_payload_shape() {
        let flat = json!({"Authorization": "Bearer a"});
        let nested = json!({"headers": {"authorization": "Bearer b"}});
        assert_eq!(init_credential(Some(&flat)).as_deref(), Some("Bearer a"));
        assert_eq!(init_credential(Some(&nested)).as_deref(), Some("Bearer b"));
        assert_eq!(init_credential(Some(&json!({}))), None);
        assert_eq!(init_credential(None), None);
    }
}
