//! A `graphql-transport-ws` / `graphql-ws` client over tokio-tungstenite, hand-rolled (STACK.md
//! §3): enough to subscribe and read events.

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

pub struct Subscription {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    pub protocol: String,
}

impl Subscription {
    /// Connects offering `protocols` (in order), sends `connection_init` with the token, waits
    /// for the ack, and subscribes to `query`.
    pub async fn start(
        base_url: &str,
        protocols: &str,
        token: &str,
        query: &str,
        variables: Value,
    ) -> Result<Subscription> {
        let mut s = Self::connect(base_url, protocols, token).await?;
        s.subscribe("1", query, variables).await?;
        Ok(s)
    }

    pub async fn connect(base_url: &str, protocols: &str, token: &str) -> Result<Subscription> {
        let url = format!("{}/graphql/ws", base_url.replacen("http", "ws", 1));
        let mut req = url.into_client_request()?;
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", protocols.parse()?);
        let (ws, resp) = tokio_tungstenite::connect_async(req)
            .await
            .context("websocket connect")?;
        let protocol = resp
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let mut s = Subscription { ws, protocol };
        s.send(json!({"type": "connection_init", "payload": {"Authorization": format!("Bearer {token}")}})).await?;
        loop {
            let m = s.next_raw(Duration::from_secs(10)).await?;
            match m["type"].as_str() {
                Some("connection_ack") => break,
                Some("ka") | Some("ping") => continue,
                _ => bail!("no connection_ack: {m}"),
            }
        }
        Ok(s)
    }

    pub async fn subscribe(&mut self, id: &str, query: &str, variables: Value) -> Result<()> {
        let ty = if self.protocol == "graphql-ws" {
            "start"
        } else {
            "subscribe"
        };
        self.send(
            json!({"id": id, "type": ty, "payload": {"query": query, "variables": variables}}),
        )
        .await
    }

    async fn send(&mut self, v: Value) -> Result<()> {
        self.ws.send(Message::Text(v.to_string().into())).await?;
        Ok(())
    }

    /// The next protocol message (any type).
    pub async fn next_raw(&mut self, timeout: Duration) -> Result<Value> {
        loop {
            let m = tokio::time::timeout(timeout, self.ws.next())
                .await
                .context("timed out waiting for a websocket message")?;
            match m {
                Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(&t)?),
                Some(Ok(Message::Close(c))) => bail!("closed: {c:?}"),
                Some(Ok(_)) => continue,
                Some(Err(e)) => bail!("websocket error: {e}"),
                None => bail!("websocket ended"),
            }
        }
    }

    /// The next `data` payload (`next` or legacy `data` message); errors for `error` messages.
    pub async fn next_data(&mut self, timeout: Duration) -> Result<Value> {
        loop {
            let m = self.next_raw(timeout).await?;
            match m["type"].as_str() {
                Some("next") | Some("data") => {
                    if let Some(e) = m["payload"].get("errors") {
                        bail!("subscription error: {e}");
                    }
                    return Ok(m["payload"]["data"].clone());
                }
                Some("ka") | Some("ping") | Some("pong") => continue,
                _ => bail!("unexpected message: {m}"),
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}
