//! The client side, as free functions over a `reqwest::Client` and a base URL, so that spawned
//! tasks (which own their client) and servers in another process can use them too.

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use upkeep_agent_protocol as proto;

/// Client calls give up after this long: a server that does not answer within it is stuck.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

/// An HTTP client as an agent fleet or a portal would use it: keep-alive connections, no proxy
/// (a proxy in the environment must not sit between the caller and loopback), and
/// [`CLIENT_TIMEOUT`]. Installs the TLS provider reqwest needs first.
pub fn http_client() -> Result<reqwest::Client> {
    upkeep_server::install_tls_provider();
    Ok(reqwest::Client::builder()
        .no_proxy()
        .timeout(CLIENT_TIMEOUT)
        .build()?)
}

/// Runs a GraphQL operation and returns the whole response, errors included.
pub async fn gql_raw(
    http: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    query: &str,
    variables: Value,
) -> Result<Value> {
    let mut req = http
        .post(format!("{url}/graphql"))
        .json(&json!({ "query": query, "variables": variables }));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await?;
    let status = resp.status();
    resp.json()
        .await
        .with_context(|| format!("non-JSON GraphQL answer ({status})"))
}

/// Runs an operation that must succeed; returns `data`.
pub async fn gql(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    query: &str,
    variables: Value,
) -> Result<Value> {
    ok_data(gql_raw(http, url, Some(token), query, variables).await?)
}

/// `data` of a response without `errors`.
pub(crate) fn ok_data(body: Value) -> Result<Value> {
    if let Some(e) = body.get("errors") {
        bail!("GraphQL errors: {e}");
    }
    Ok(body["data"].clone())
}

/// Waits until `GET /healthz` answers 200, polling every 2 ms (start-up is timed by it).
pub async fn wait_healthy(http: &reqwest::Client, url: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = http.get(format!("{url}/healthz")).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{url}/healthz did not answer within a minute");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The `/metrics` page.
pub async fn metrics_text(http: &reqwest::Client, url: &str) -> Result<String> {
    Ok(http
        .get(format!("{url}/metrics"))
        .send()
        .await?
        .text()
        .await?)
}

/// One value of `/metrics` (a metric without labels).
pub async fn metric(http: &reqwest::Client, url: &str, name: &str) -> Result<f64> {
    metrics_text(http, url)
        .await?
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("metric {name} missing"))
}

/// Enrolls one machine over `/agent/v1/enroll`, as an agent does; a refusal is an error that
/// carries the server's answer.
pub async fn enroll(
    http: &reqwest::Client,
    url: &str,
    request: &proto::EnrollRequest,
) -> Result<proto::EnrollResponse> {
    let resp = http
        .post(format!("{url}/agent/v1/enroll"))
        .json(request)
        .send()
        .await?;
    let status = resp.status();
    if !status.is_success() {
        bail!(
            "enrollment of {} answered {status}: {}",
            request.hostname,
            resp.text().await?
        );
    }
    Ok(resp.json().await?)
}

/// A server as a client sees it: a base URL (a server of this process, a server process, one
/// replica, or a load balancer in front of several) and the HTTP client that reaches it.
#[derive(Clone)]
pub struct Endpoint {
    pub url: String,
    pub http: reqwest::Client,
}

impl Endpoint {
    /// `url` through a fresh [`http_client`].
    pub fn new(url: impl Into<String>) -> Result<Endpoint> {
        Ok(Endpoint {
            url: url.into(),
            http: http_client()?,
        })
    }

    /// Runs a GraphQL operation and returns the whole response.
    pub async fn gql_raw(
        &self,
        token: Option<&str>,
        query: &str,
        variables: Value,
    ) -> Result<Value> {
        gql_raw(&self.http, &self.url, token, query, variables).await
    }

    /// Runs an operation that must succeed; returns `data`.
    pub async fn gql(&self, token: &str, query: &str, variables: Value) -> Result<Value> {
        gql(&self.http, &self.url, token, query, variables).await
    }

    /// Runs an operation that must fail; returns the first error's `extensions.code`.
    pub async fn gql_err(
        &self,
        token: Option<&str>,
        query: &str,
        variables: Value,
    ) -> Result<String> {
        let body = self.gql_raw(token, query, variables).await?;
        let Some(err) = body["errors"].get(0) else {
            bail!("expected an error, got {body}")
        };
        Ok(err["extensions"]["code"]
            .as_str()
            .unwrap_or("<no code>")
            .to_string())
    }

    /// Logs in; returns the session token.
    pub async fn login(&self, email: &str, password: &str) -> Result<String> {
        let d = self
            .gql_raw(
                None,
                "mutation($e: String!, $p: String!) { login(email: $e, password: $p) { token } }",
                json!({"e": email, "p": password}),
            )
            .await?;
        d["data"]["login"]["token"]
            .as_str()
            .map(String::from)
            .with_context(|| format!("login failed: {d}"))
    }

    /// Logs the MSP admin in.
    pub async fn admin(&self) -> Result<String> {
        self.login(crate::ADMIN_EMAIL, crate::ADMIN_PASSWORD).await
    }

    /// Creates a tenant in Europe/Berlin; returns its id.
    pub async fn create_tenant(&self, token: &str, name: &str) -> Result<String> {
        let d = self
            .gql(token, "mutation($n: String!) { createTenant(input: {name: $n, timeZone: \"Europe/Berlin\"}) { id } }", json!({"n": name}))
            .await?;
        id_of(&d["createTenant"], "tenant")
    }

    /// A new enrollment key of `tenant`.
    pub async fn enrollment_key(&self, token: &str, tenant: &str) -> Result<String> {
        let d = self
            .gql(
                token,
                "mutation($t: ID!) { createEnrollmentKey(tenantId: $t) { id key } }",
                json!({"t": tenant}),
            )
            .await?;
        Ok(d["createEnrollmentKey"]["key"]
            .as_str()
            .context("enrollment key")?
            .to_string())
    }

    /// `createSoftware(input)`; returns the software's id.
    pub async fn create_software(&self, token: &str, input: Value) -> Result<String> {
        let d = self
            .gql(
                token,
                "mutation($i: CreateSoftwareInput!) { createSoftware(input: $i) { id } }",
                json!({ "i": input }),
            )
            .await?;
        id_of(&d["createSoftware"], "software")
    }

    /// `createDeployment(input)`; returns the deployment's id.
    pub async fn create_deployment(&self, token: &str, input: Value) -> Result<String> {
        let d = self
            .gql(
                token,
                "mutation($i: CreateDeploymentInput!) { createDeployment(input: $i) { id } }",
                json!({ "i": input }),
            )
            .await?;
        id_of(&d["createDeployment"], "deployment")
    }

    /// Enrolls one machine over the agent protocol (no agent runs).
    pub async fn enroll(&self, request: &proto::EnrollRequest) -> Result<proto::EnrollResponse> {
        enroll(&self.http, &self.url, request).await
    }

    /// The `/metrics` page.
    pub async fn metrics_text(&self) -> Result<String> {
        metrics_text(&self.http, &self.url).await
    }

    /// One value of `/metrics` (a metric without labels).
    pub async fn metric(&self, name: &str) -> Result<f64> {
        metric(&self.http, &self.url, name).await
    }
}

fn id_of(created: &Value, what: &str) -> Result<String> {
    Ok(created["id"]
        .as_str()
        .with_context(|| format!("{what} id"))?
        .to_string())
}
