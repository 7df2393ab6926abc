//! GraphQL over HTTP as the spec (graphql-over-http) and common clients expect it, checked by
//! the reference `graphql-http` audit (`tests/portal/audit.mjs`):
//!
//! - the answer's media type is negotiated from `Accept`: `application/graphql-response+json`
//!   when the client prefers it, `application/json` for `application/json`, `*/*` or no
//!   `Accept` at all; anything else is 406;
//! - a request that never reached execution (a document that does not parse or validate,
//!   variables that do not coerce, an unknown persisted query) is a *request error*: no `data`
//!   entry, and 400 under `application/graphql-response+json` (200 under `application/json`,
//!   as legacy clients expect);
//! - a malformed request (not JSON, a parameter of the wrong type, no query) is 400 under both;
//!   `POST` needs `Content-Type: application/json` (415 otherwise), `GET` takes the parameters
//!   from the URL and refuses mutations with 405;
//! - a JSON array is a batch (Apollo's `BatchHttpLink`): at most [`MAX_BATCH`] operations, run
//!   one after the other, each with its own limits, answered as an array in the same order.

use super::persisted::{PersistedQueries, Refusal};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Most operations one batched request may carry.
pub const MAX_BATCH: usize = 10;

/// The media type of an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MediaType {
    /// `application/graphql-response+json`: status codes follow the GraphQL outcome.
    GraphQLResponse,
    /// `application/json`: request errors are still 200, as clients before the spec expect.
    Json,
}

impl MediaType {
    pub fn content_type(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            MediaType::GraphQLResponse => "application/graphql-response+json; charset=utf-8",
            MediaType::Json => "application/json; charset=utf-8",
        })
    }
}

/// One entry of an `Accept` header: the media range (lowercase) and its weight.
fn accept_entries(headers: &HeaderMap) -> Vec<(String, f32, Option<String>)> {
    let mut out = Vec::new();
    for value in headers.get_all(header::ACCEPT) {
        let Ok(value) = value.to_str() else { continue };
        for item in value.split(',') {
            let mut parts = item.split(';');
            let range = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            if range.is_empty() {
                continue;
            }
            let mut q = 1.0f32;
            let mut charset = None;
            for p in parts {
                let Some((k, v)) = p.split_once('=') else {
                    continue;
                };
                match k.trim().to_ascii_lowercase().as_str() {
                    "q" => q = v.trim().parse().unwrap_or(0.0),
                    "charset" => charset = Some(v.trim().trim_matches('"').to_ascii_lowercase()),
                    _ => {}
                }
            }
            out.push((range, q, charset));
        }
    }
    out
}

/// The media type to answer in: the acceptable one with the highest weight, the earlier one
/// on a tie; `application/json` when the client sends no `Accept`. `None`: nothing the
/// server speaks is acceptable (406).
pub fn negotiate(headers: &HeaderMap) -> Option<MediaType> {
    let entries = accept_entries(headers);
    if entries.is_empty() {
        return Some(MediaType::Json);
    }
    let mut best: Option<(MediaType, f32)> = None;
    for (range, q, charset) in entries {
        if q <= 0.0
            || charset
                .as_deref()
                .is_some_and(|c| c != "utf-8" && c != "utf8")
        {
            continue;
        }
        let media = match range.as_str() {
            "application/graphql-response+json" => MediaType::GraphQLResponse,
            "application/json" | "application/*" | "*/*" => MediaType::Json,
            _ => continue,
        };
        if best.is_none_or(|(_, b)| q > b) {
            best = Some((media, q));
        }
    }
    best.map(|(m, _)| m)
}

/// Whether the client asks for a page (a browser navigating): `Accept` names `text/html`.
pub fn wants_html(headers: &HeaderMap) -> bool {
    accept_entries(headers)
        .iter()
        .any(|(range, q, _)| range == "text/html" && *q > 0.0)
}

/// A request refused before it ran, with the status and code to answer.
#[derive(Debug)]
pub struct Refused {
    /// Status under `application/json`.
    json_status: StatusCode,
    /// Status under `application/graphql-response+json`.
    graphql_status: StatusCode,
    code: &'static str,
    message: String,
    allow: Option<&'static str>,
}

impl Refused {
    /// A malformed HTTP request: 400 whatever the media type.
    pub fn bad_request(message: impl Into<String>) -> Refused {
        Refused {
            json_status: StatusCode::BAD_REQUEST,
            graphql_status: StatusCode::BAD_REQUEST,
            code: "BAD_REQUEST",
            message: message.into(),
            allow: None,
        }
    }

    fn with_status(status: StatusCode, code: &'static str, message: impl Into<String>) -> Refused {
        Refused {
            json_status: status,
            graphql_status: status,
            code,
            message: message.into(),
            allow: None,
        }
    }

    /// The persisted-query outcome that keeps the request from running.
    fn persisted(r: Refusal) -> Refused {
        match r {
            // A GraphQL request error: Apollo Server's shape (200 under application/json).
            Refusal::NotFound => Refused {
                json_status: StatusCode::OK,
                graphql_status: StatusCode::BAD_REQUEST,
                code: r.code(),
                message: r.message(),
                allow: None,
            },
            Refusal::Invalid(_) => Refused::bad_request(r.message()),
        }
    }

    fn status(&self, media: MediaType) -> StatusCode {
        match media {
            MediaType::Json => self.json_status,
            MediaType::GraphQLResponse => self.graphql_status,
        }
    }

    fn body(&self) -> Value {
        serde_json::json!({ "message": self.message, "extensions": { "code": self.code } })
    }
}

/// Nothing acceptable in `Accept`: 406, in JSON all the same.
pub fn not_acceptable() -> Response {
    let r = Refused::with_status(
        StatusCode::NOT_ACCEPTABLE,
        "NOT_ACCEPTABLE",
        "the answer is application/graphql-response+json or application/json: accept one of them",
    );
    refusal(MediaType::Json, &r)
}

/// What one operation of a request sends.
#[derive(Debug, Default)]
pub struct Params {
    pub query: Option<String>,
    pub operation_name: Option<String>,
    pub variables: Option<Map<String, Value>>,
    pub extensions: Map<String, Value>,
}

/// A request's operations: one, or a batch.
#[derive(Debug)]
pub enum Body {
    Single(Params),
    Batch(Vec<Params>),
}

/// The parameters of a `GET` request's URL (`query`, `operationName`, and `variables` and
/// `extensions` as JSON text).
pub fn from_query_string(raw: &str) -> Result<Params, Refused> {
    let mut p = Params::default();
    for (k, v) in url::form_urlencoded::parse(raw.as_bytes()) {
        match k.as_ref() {
            "query" => p.query = Some(v.into_owned()),
            "operationName" => p.operation_name = Some(v.into_owned()).filter(|s| !s.is_empty()),
            "variables" => p.variables = json_object_param("variables", &v)?,
            "extensions" => p.extensions = json_object_param("extensions", &v)?.unwrap_or_default(),
            _ => {}
        }
    }
    Ok(p)
}

fn json_object_param(name: &str, text: &str) -> Result<Option<Map<String, Value>>, Refused> {
    if text.is_empty() {
        return Ok(None);
    }
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => Ok(Some(m)),
        Ok(Value::Null) => Ok(None),
        _ => Err(Refused::bad_request(format!(
            "the {name} parameter must be a JSON object"
        ))),
    }
}

/// The body of a `POST`: `Content-Type: application/json` (UTF-8), one JSON object or an
/// array of them.
pub fn from_post(headers: &HeaderMap, bytes: &[u8]) -> Result<Body, Refused> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let mut parts = ct.split(';');
    let essence = parts.next().unwrap_or("").trim();
    let charset_ok = parts.all(|p| match p.split_once('=') {
        Some((k, v)) if k.trim() == "charset" => {
            matches!(v.trim().trim_matches('"'), "utf-8" | "utf8")
        }
        _ => true,
    });
    if essence != "application/json" || !charset_ok {
        let what = if essence.is_empty() { "none" } else { essence };
        return Err(Refused::with_status(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UNSUPPORTED_MEDIA_TYPE",
            format!(
                "send the request as Content-Type: application/json (UTF-8), or multipart/form-data for uploads (got {what})"
            ),
        ));
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(Refused::bad_request(
            "the request has no body: send {\"query\": \"…\"}",
        ));
    }
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| Refused::bad_request(format!("the body is not JSON: {e}")))?;
    match value {
        Value::Array(items) => {
            if items.is_empty() {
                return Err(Refused::bad_request(
                    "an empty batch: send at least one operation",
                ));
            }
            if items.len() > MAX_BATCH {
                return Err(Refused::bad_request(format!(
                    "a batch may hold at most {MAX_BATCH} operations (this one holds {})",
                    items.len()
                )));
            }
            items
                .into_iter()
                .map(params_from_value)
                .collect::<Result<_, _>>()
                .map(Body::Batch)
        }
        v => params_from_value(v).map(Body::Single),
    }
}

/// One operation's parameters from a JSON object, each checked for its type.
fn params_from_value(v: Value) -> Result<Params, Refused> {
    let Value::Object(mut o) = v else {
        return Err(Refused::bad_request(
            "the body must be a JSON object {\"query\": …} (or an array of them)",
        ));
    };
    let string = |o: &mut Map<String, Value>, k: &str| match o.remove(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(Refused::bad_request(format!("{k} must be a string"))),
    };
    let object = |o: &mut Map<String, Value>, k: &str| match o.remove(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(_) => Err(Refused::bad_request(format!("{k} must be an object"))),
    };
    Ok(Params {
        query: string(&mut o, "query")?,
        operation_name: string(&mut o, "operationName")?,
        variables: object(&mut o, "variables")?,
        extensions: object(&mut o, "extensions")?.unwrap_or_default(),
    })
}

/// The kind of operation a document would run (`None` when it does not parse or names no
/// such operation: execution then says why).
pub fn operation_type(
    query: &str,
    operation_name: Option<&str>,
) -> Option<async_graphql::parser::types::OperationType> {
    use async_graphql::parser::types::DocumentOperations;
    let doc = async_graphql::parser::parse_query(query).ok()?;
    match (doc.operations, operation_name) {
        (DocumentOperations::Single(op), _) => Some(op.node.ty),
        (DocumentOperations::Multiple(ops), Some(name)) => ops
            .iter()
            .find(|(n, _)| n.as_str() == name)
            .map(|(_, op)| op.node.ty),
        (DocumentOperations::Multiple(ops), None) if ops.len() == 1 => {
            ops.values().next().map(|op| op.node.ty)
        }
        _ => None,
    }
}

/// A `GET` that would run a mutation or a subscription: 405, `Allow: POST`.
pub fn refuse_on_get(p: &Params) -> Result<(), Refused> {
    use async_graphql::parser::types::OperationType;
    let Some(q) = &p.query else { return Ok(()) };
    match operation_type(q, p.operation_name.as_deref()) {
        Some(OperationType::Mutation | OperationType::Subscription) => Err(Refused {
            json_status: StatusCode::METHOD_NOT_ALLOWED,
            graphql_status: StatusCode::METHOD_NOT_ALLOWED,
            code: "METHOD_NOT_ALLOWED",
            message:
                "GET runs queries only: send mutations with POST (subscriptions over /graphql/ws)"
                    .into(),
            allow: Some("POST"),
        }),
        _ => Ok(()),
    }
}

/// Set once execution starts (by the schema's extension): a response without it is a request
/// error, which carries no `data`.
#[derive(Clone, Default)]
pub struct Executed(pub Arc<AtomicBool>);

impl Executed {
    pub fn mark(&self) {
        self.0.store(true, Ordering::Release);
    }

    fn get(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

impl Params {
    /// The request async-graphql runs: a persisted query resolved (or registered), the
    /// variables and extensions as sent, and the [`Executed`] marker. Over `GET` (`get`), the
    /// resolved document must be a query: a hash-only request names its document only here.
    pub fn into_request(
        mut self,
        persisted: &PersistedQueries,
        get: bool,
    ) -> Result<(async_graphql::Request, Executed), Refused> {
        persisted
            .resolve(&mut self.query, &mut self.extensions)
            .map_err(Refused::persisted)?;
        if get {
            refuse_on_get(&self)?;
        }
        let Some(query) = self.query.filter(|q| !q.trim().is_empty()) else {
            return Err(Refused::bad_request(
                "the query parameter is missing: send {\"query\": \"{ … }\"}",
            ));
        };
        let value = serde_json::json!({
            "query": query,
            "operationName": self.operation_name,
            "variables": self.variables.map_or(Value::Null, Value::Object),
            "extensions": Value::Object(self.extensions),
        });
        let request: async_graphql::Request = serde_json::from_value(value)
            .map_err(|e| Refused::bad_request(format!("invalid request: {e}")))?;
        let executed = Executed::default();
        Ok((request.data(executed.clone()), executed))
    }
}

/// What running one operation gave.
pub struct Outcome {
    pub response: async_graphql::Response,
    pub executed: Executed,
}

/// One operation's answer as JSON: request errors without `data`, and no error location at
/// line 0 (errors without a position carry no `locations`).
fn outcome_json(o: &Outcome) -> Value {
    let mut v = serde_json::to_value(&o.response).unwrap_or_else(|_| {
        serde_json::json!({"errors": [{"message": "the response could not be encoded", "extensions": {"code": "INTERNAL"}}]})
    });
    if let Some(obj) = v.as_object_mut()
        && !o.executed.get()
    {
        obj.remove("data");
    }
    v
}

/// Whether an outcome is a request error (it never reached execution).
fn is_request_error(o: &Outcome) -> bool {
    !o.executed.get()
}

fn json_response(media: MediaType, status: StatusCode, body: &Value) -> Response {
    let mut r = (status, body.to_string()).into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, media.content_type());
    r
}

/// The answer to a refused request.
pub fn refusal(media: MediaType, r: &Refused) -> Response {
    let mut resp = json_response(
        media,
        r.status(media),
        &serde_json::json!({ "errors": [r.body()] }),
    );
    if let Some(allow) = r.allow {
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(allow));
    }
    resp
}

/// The answer to one operation.
pub fn answer(media: MediaType, o: Outcome) -> Response {
    let status = if is_request_error(&o) && media == MediaType::GraphQLResponse {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    let mut resp = json_response(media, status, &outcome_json(&o));
    if o.response.is_ok()
        && let Some(cc) = o.response.cache_control.value()
        && let Ok(v) = HeaderValue::from_str(&cc)
    {
        resp.headers_mut().insert(header::CACHE_CONTROL, v);
    }
    resp.headers_mut().extend(o.response.http_headers);
    resp
}

/// The answer to a batch: 200 with one entry per operation, in order.
pub fn answer_batch(media: MediaType, items: Vec<Result<Outcome, Refused>>) -> Response {
    let body: Vec<Value> = items
        .iter()
        .map(|i| match i {
            Ok(o) => outcome_json(o),
            Err(r) => serde_json::json!({ "errors": [r.body()] }),
        })
        .collect();
    json_response(media, StatusCode::OK, &Value::Array(body))
}

/// Drops error locations at line 0 (async-graphql's "no position"): an error without a
/// position has no `locations` at all.
pub fn strip_empty_locations(resp: &mut async_graphql::Response) {
    for e in &mut resp.errors {
        e.locations.retain(|p| p.line != 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn negotiation_follows_the_weights_then_the_order() {
        use MediaType::*;
        assert_eq!(negotiate(&HeaderMap::new()), Some(Json));
        assert_eq!(negotiate(&accept("*/*")), Some(Json));
        assert_eq!(negotiate(&accept("application/json")), Some(Json));
        assert_eq!(
            negotiate(&accept("application/graphql-response+json")),
            Some(GraphQLResponse)
        );
        assert_eq!(
            negotiate(&accept(
                "application/graphql-response+json, application/json;q=0.9"
            )),
            Some(GraphQLResponse)
        );
        assert_eq!(
            negotiate(&accept(
                "application/json;q=0.9, application/graphql-response+json"
            )),
            Some(GraphQLResponse)
        );
        assert_eq!(
            negotiate(&accept(
                "application/json, application/graphql-response+json"
            )),
            Some(Json)
        );
        assert_eq!(negotiate(&accept("application/json; charset=utf-16")), None);
        assert_eq!(negotiate(&accept("text/html")), None);
        assert_eq!(
            negotiate(&accept("application/graphql-response+json;q=0")),
            None
        );
        assert!(wants_html(&accept(
            "text/html,application/xhtml+xml,*/*;q=0.8"
        )));
        assert!(!wants_html(&accept("*/*")));
    }

    #[test]
    fn parameters_of_the_wrong_type_are_refused() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        for bad in [
            r#"{"query": 1}"#,
            r#"{"query": "{ a }", "variables": "x"}"#,
            r#"{"query": "{ a }", "operationName": {}}"#,
            r#"{"query": "{ a }", "extensions": []}"#,
            r#"[]"#,
            r#"{"#,
            "",
        ] {
            let r = from_post(&h, bad.as_bytes()).unwrap_err();
            assert_eq!(r.status(MediaType::Json), StatusCode::BAD_REQUEST, "{bad}");
        }
        let many = format!("[{}]", [r#"{"query":"{a}"}"#; MAX_BATCH + 1].join(","));
        assert!(from_post(&h, many.as_bytes()).is_err());
        assert!(matches!(
            from_post(&h, br#"[{"query":"{a}"},{"query":"{b}"}]"#),
            Ok(Body::Batch(v)) if v.len() == 2
        ));
        let none = from_post(&HeaderMap::new(), br#"{"query":"{a}"}"#).unwrap_err();
        assert_eq!(
            none.status(MediaType::Json),
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
    }

    #[test]
    fn get_parameters_and_mutations() {
        let p = from_query_string("query=mutation%20%7B%20a%20%7D").unwrap();
        assert!(refuse_on_get(&p).is_err());
        let p = from_query_string(
            "query=query%20A%20%7B%20a%20%7D%20mutation%20B%20%7B%20b%20%7D&operationName=A",
        )
        .unwrap();
        assert!(refuse_on_get(&p).is_ok());
        assert!(from_query_string("query=%7Ba%7D&variables=%5B%5D").is_err());
        let p = from_query_string("query=%7Ba%7D&variables=%7B%22x%22%3A1%7D").unwrap();
        assert_eq!(p.variables.unwrap()["x"], 1);
    }
}
