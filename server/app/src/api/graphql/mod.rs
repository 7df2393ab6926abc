//! The GraphQL API: schema, limits, and the HTTP/WebSocket handlers that establish who calls.

pub mod connection;
pub mod ctx;
pub mod enums;
mod impact;
mod inputs;
mod lists;
mod mutation;
mod node;
mod order;
mod parameters;
pub mod persisted;
mod query;
mod report;
mod rollout_updates;
pub mod scalars;
mod subscription;
pub mod transport;
pub mod types;
pub mod upload;
pub mod ws;

use crate::auth::{Actor, Principal};
use crate::error::ApiError;
use crate::services::App;
use async_graphql::{ID, Schema};
use async_graphql_axum::GraphQLProtocol;
use axum::extract::{ConnectInfo, State, WebSocketUpgrade};
use axum::http::{HeaderMap, Method};
use axum::response::{IntoResponse, Response};
use std::net::SocketAddr;
use std::sync::Arc;
use upkeep_core::domain::*;

pub use mutation::Mutation;
pub use query::Query;
pub use subscription::Subscription;

pub type UpkeepSchema = Schema<Query, Mutation, Subscription>;

/// Depth and complexity limits: the standard introspection query (depth ~13) passes; bombs do
/// not.
pub const MAX_DEPTH: usize = 32;
pub const MAX_COMPLEXITY: usize = 5000;

pub fn schema(app: Option<Arc<App>>) -> UpkeepSchema {
    let mut b = Schema::build(Query, Mutation::default(), Subscription)
        .limit_depth(MAX_DEPTH)
        .limit_complexity(MAX_COMPLEXITY)
        .limit_recursive_depth(64)
        .extension(LimitCodes);
    if let Some(app) = app {
        b = b.data(app);
    }
    b.finish()
}

/// The SDL portals build against (what `schema/schema.graphql` holds).
pub fn sdl() -> String {
    schema(None).sdl_with_options(async_graphql::SDLExportOptions::new().include_specified_by())
}

pub fn parse_id(field: &str, id: &ID) -> Result<Id, ApiError> {
    id.parse::<Id>()
        .map_err(|_| ApiError::bad(field, format!("'{}' is not an id", id.as_str())))
}

/// What a list field adds to a query's complexity: one scan ([`LIST_BASE_COST`]) plus its
/// selection once for every ten items it may return (`first`, clamped as the resolver clamps
/// it). A page of 500 small nodes stays well inside [`MAX_COMPLEXITY`]; hundreds of aliased
/// lists, each a scan, do not.
pub fn list_cost(first: Option<i32>, default: usize, max: usize, child: usize) -> usize {
    let n = first.map_or(default, |f| (f.max(0) as usize).min(max));
    LIST_BASE_COST.saturating_add(child.saturating_mul(n) / 10)
}

/// [`list_cost`] of a Relay connection page.
pub fn page_cost(first: Option<i32>, child: usize) -> usize {
    list_cost(first, connection::DEFAULT_PAGE, connection::MAX_PAGE, child)
}

/// What any list field costs before its items: it reads an index or a table.
pub const LIST_BASE_COST: usize = 50;

/// What a field that scans many records or renders a mail costs (status counts, previews): a
/// document may hold at most ten of them.
pub const EXPENSIVE_FIELD_COST: usize = MAX_COMPLEXITY / 10;

/// Turns async-graphql's own validation errors (depth, complexity, parse) into
/// `BAD_USER_INPUT`, so every error carries an `extensions.code`.
struct LimitCodes;

impl async_graphql::extensions::ExtensionFactory for LimitCodes {
    fn create(&self) -> Arc<dyn async_graphql::extensions::Extension> {
        Arc::new(LimitCodesExt)
    }
}

struct LimitCodesExt;

#[async_trait::async_trait]
impl async_graphql::extensions::Extension for LimitCodesExt {
    /// Refuses documents whose selections, with every fragment spread expanded, exceed
    /// `MAX_EXPANDED_FIELDS`: async-graphql's own complexity check skips `__typename` and walks
    /// fragments again at every spread, so a small document with doubling fragments would cost
    /// exponential time before any resolver runs.
    ///
    /// This runs in `prepare_request`, before async-graphql parses the document itself: its
    /// recursive-depth check (which runs inside parsing) walks every fragment spread again
    /// without memoisation, so the measure must come first. The parsed document is handed on,
    /// so nothing is parsed twice. Operations over HTTP and WebSocket both pass here.
    ///
    /// Architecture invariant: query cost is measured here, on the parsed document, before
    /// async-graphql walks it — for every operation, HTTP or WebSocket.
    async fn prepare_request(
        &self,
        ctx: &async_graphql::extensions::ExtensionContext<'_>,
        mut request: async_graphql::Request,
        next: async_graphql::extensions::NextPrepareRequest<'_>,
    ) -> async_graphql::ServerResult<async_graphql::Request> {
        // Taken out while the parsed document borrows the request.
        let variables = std::mem::take(&mut request.variables);
        let operation_name = request.operation_name.take();
        let doc = request.parsed_query()?;
        if doc.operations.iter().count() > MAX_OPERATIONS {
            return Err(async_graphql::ServerError::new(
                format!("a document may hold at most {MAX_OPERATIONS} operations"),
                None,
            ));
        }
        if let Some(e) = missing_required_variable(doc, operation_name.as_deref(), &variables) {
            return Err(e);
        }
        let size = expanded_size(doc);
        request.variables = variables;
        request.operation_name = operation_name;
        match size {
            Some(n) if n <= MAX_EXPANDED_FIELDS => next.run(ctx, request).await,
            _ => Err(async_graphql::ServerError::new(
                format!(
                    "the query selects more than {MAX_EXPANDED_FIELDS} fields once its fragments are expanded (or its fragments form a cycle)"
                ),
                None,
            )),
        }
    }

    /// Every mutation (but `login`, which records its own) runs with an audit record waiting for
    /// its first change: the store writes it in that change's transaction.
    async fn resolve(
        &self,
        ctx: &async_graphql::extensions::ExtensionContext<'_>,
        info: async_graphql::extensions::ResolveInfo<'_>,
        next: async_graphql::extensions::NextResolve<'_>,
    ) -> async_graphql::ServerResult<Option<async_graphql::Value>> {
        if info.parent_type != "Mutation" || info.name == "login" {
            return next.run(ctx, info).await;
        }
        let (Some(actor), Some(app)) = (ctx.data_opt::<Actor>(), ctx.data_opt::<Arc<App>>()) else {
            return next.run(ctx, info).await;
        };
        let address = ctx.data_opt::<ClientAddr>().map(|a| a.0.ip());
        let event = crate::audit::by_actor(actor, info.name, address, app.clock.now());
        upkeep_store::audited(event, next.run(ctx, info)).await
    }

    async fn request(
        &self,
        ctx: &async_graphql::extensions::ExtensionContext<'_>,
        next: async_graphql::extensions::NextRequest<'_>,
    ) -> async_graphql::Response {
        let mut resp = next.run(ctx).await;
        crate::error::add_codes(&mut resp);
        transport::strip_empty_locations(&mut resp);
        resp
    }

    /// Marks the request as executed (see [`transport::Executed`]): what fails before this
    /// point is a request error, answered without `data`.
    async fn execute(
        &self,
        ctx: &async_graphql::extensions::ExtensionContext<'_>,
        operation_name: Option<&str>,
        next: async_graphql::extensions::NextExecute<'_>,
    ) -> async_graphql::Response {
        if let Some(e) = ctx.data_opt::<transport::Executed>() {
            e.mark();
        }
        next.run(ctx, operation_name).await
    }

    fn subscribe<'s>(
        &self,
        ctx: &async_graphql::extensions::ExtensionContext<'_>,
        stream: futures_util::stream::BoxStream<'s, async_graphql::Response>,
        next: async_graphql::extensions::NextSubscribe<'_>,
    ) -> futures_util::stream::BoxStream<'s, async_graphql::Response> {
        use futures_util::StreamExt;
        next.run(ctx, stream)
            .map(|mut r| {
                crate::error::add_codes(&mut r);
                transport::strip_empty_locations(&mut r);
                r
            })
            .boxed()
    }
}

/// A required variable (`$x: T!` without a default) that the request leaves out or sends as
/// null: a request error before execution, as the spec has it (async-graphql would only notice
/// when a resolver reads the argument, after other fields ran).
fn missing_required_variable(
    doc: &async_graphql::parser::types::ExecutableDocument,
    operation_name: Option<&str>,
    variables: &async_graphql::Variables,
) -> Option<async_graphql::ServerError> {
    use async_graphql::parser::types::DocumentOperations;
    let op = match (&doc.operations, operation_name) {
        (DocumentOperations::Single(op), _) => op,
        (DocumentOperations::Multiple(ops), Some(name)) => {
            ops.iter().find(|(n, _)| n.as_str() == name)?.1
        }
        (DocumentOperations::Multiple(ops), None) if ops.len() == 1 => ops.values().next()?,
        _ => return None,
    };
    op.node.variable_definitions.iter().find_map(|def| {
        let d = &def.node;
        let given = variables
            .get(&d.name.node)
            .is_some_and(|v| !matches!(v, async_graphql::Value::Null));
        (!d.var_type.node.nullable && d.default_value.is_none() && !given).then(|| {
            async_graphql::ServerError::new(
                format!(
                    "variable ${} of type {} is required: send it in variables",
                    d.name.node, d.var_type.node
                ),
                Some(def.pos),
            )
        })
    })
}

/// Most selections a document may make with its fragments expanded (the standard introspection
/// query makes a few hundred).
pub const MAX_EXPANDED_FIELDS: u64 = 5000;

/// Most operations one document may define (only one runs; the rest are parsed and validated).
pub const MAX_OPERATIONS: usize = 100;

/// Number of field selections of the whole document with fragment spreads expanded, computed
/// with one memo per fragment (linear in the document); `None` for a fragment cycle.
fn expanded_size(doc: &async_graphql::parser::types::ExecutableDocument) -> Option<u64> {
    use async_graphql::parser::types::{Selection, SelectionSet};
    use std::collections::HashMap;
    fn set(
        s: &SelectionSet,
        doc: &async_graphql::parser::types::ExecutableDocument,
        memo: &mut HashMap<String, Option<u64>>,
        depth: u32,
    ) -> Option<u64> {
        if depth > 200 {
            return None;
        }
        let mut n: u64 = 0;
        for item in &s.items {
            let add = match &item.node {
                Selection::Field(f) => {
                    1u64.saturating_add(set(&f.node.selection_set.node, doc, memo, depth + 1)?)
                }
                Selection::InlineFragment(f) => {
                    set(&f.node.selection_set.node, doc, memo, depth + 1)?
                }
                Selection::FragmentSpread(sp) => {
                    let name = sp.node.fragment_name.node.to_string();
                    match memo.get(&name) {
                        Some(Some(v)) => *v,
                        Some(None) => return None, // on the stack: a cycle
                        None => {
                            memo.insert(name.clone(), None);
                            let v = match doc.fragments.get(&sp.node.fragment_name.node) {
                                Some(frag) => {
                                    set(&frag.node.selection_set.node, doc, memo, depth + 1)?
                                }
                                None => 0,
                            };
                            memo.insert(name, Some(v));
                            v
                        }
                    }
                }
            };
            n = n.saturating_add(add);
        }
        Some(n)
    }
    let mut memo = HashMap::new();
    let mut total: u64 = 0;
    for (_, op) in doc.operations.iter() {
        total = total.saturating_add(set(&op.node.selection_set.node, doc, &mut memo, 0)?);
    }
    Some(total)
}

/// Resolves the `Authorization` value (a JWT or an API key) to an actor. The one place that
/// decides whether a credential is still good: HTTP requests and WebSocket operations call it
/// each time, so a deletion, disablement or password change ends a user's tokens at once.
///
/// Architecture invariant: whether a credential is still good is decided here and nowhere else.
pub async fn authenticate(app: &App, value: Option<&str>) -> Result<Option<Actor>, ApiError> {
    let Some(v) = value else { return Ok(None) };
    let token = v
        .strip_prefix("Bearer ")
        .or_else(|| v.strip_prefix("bearer "))
        .unwrap_or(v)
        .trim();
    if token.is_empty() {
        return Ok(None);
    }
    if token.starts_with("upk_") {
        return app.accounts.authenticate_api_key(token).await.map(Some);
    }
    let claims = app.keys.verify_api_token(token, app.clock.now())?;
    let id = claims
        .sub
        .parse::<Id>()
        .map_err(|_| ApiError::Unauthenticated("the token is invalid".into()))?;
    // The user is read per request (a sled point read): their current record decides.
    let user = app
        .store
        .get::<User>(&id)
        .await?
        .ok_or_else(|| ApiError::Unauthenticated("the token's user no longer exists".into()))?;
    if user.disabled {
        return Err(ApiError::Unauthenticated("the account is disabled".into()));
    }
    if claims.generation != user.token_generation {
        return Err(ApiError::Unauthenticated(
            "the token ended when the account's password or access changed; log in again".into(),
        ));
    }
    let mfa_pending = app.config.require_mfa_for_msp_roles && user.role.is_msp() && !user.totp_on();
    Ok(Some(Actor {
        principal: Principal::User {
            id: user.id,
            email: user.email.text().to_string(),
            signed_in_at: claims.signed_in_at(),
        },
        role: user.role,
        tenant_id: user.tenant_id,
        mfa_pending,
    }))
}

/// `GET` and `POST /graphql` (see [`transport`] for the rules): a browser navigating here
/// (`Accept: text/html`) gets GraphiQL; everything else is GraphQL over HTTP.
pub async fn graphql_handler(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    axum::Extension(persisted): axum::Extension<Arc<persisted::PersistedQueries>>,
    method: Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    use transport::Body;
    let get = method == Method::GET || method == Method::HEAD;
    if get && transport::wants_html(&headers) {
        return crate::api::graphiql::page();
    }
    let Some(media) = transport::negotiate(&headers) else {
        return transport::not_acceptable();
    };
    let parsed = if get {
        transport::from_query_string(uri.query().unwrap_or(""))
            .and_then(|p| transport::refuse_on_get(&p).map(|()| Body::Single(p)))
    } else {
        match body {
            Ok(bytes) => transport::from_post(&headers, &bytes),
            // Too large (413) or cut short: `errors_as_graphql` gives it the GraphQL shape.
            Err(rejection) => return rejection.into_response(),
        }
    };
    let parsed = match parsed {
        Ok(p) => p,
        Err(r) => return transport::refusal(media, &r),
    };
    let auth = headers.get("authorization").and_then(|h| h.to_str().ok());
    let (actor, refused) = match authenticate(&app, auth).await {
        Ok(actor) => (actor, None),
        // A stale or bad credential does not stop operations that need none (`login`): the
        // operations that need one answer why it was refused.
        Err(ApiError::Unauthenticated(why)) => (None, Some(why)),
        Err(e) => return refuse_credential(media, e),
    };
    let run = |p: transport::Params| {
        let (app, actor, refused, persisted) = (
            app.clone(),
            actor.clone(),
            refused.clone(),
            persisted.clone(),
        );
        async move {
            let (mut req, executed) = p.into_request(&persisted, get)?;
            req = req.data(ClientAddr(peer)).data(app);
            if let Some(actor) = actor {
                req = req.data(actor);
            }
            if let Some(why) = refused {
                req = req.data(RefusedCredential(why));
            }
            let response = shared_schema().execute(req).await;
            Ok::<_, transport::Refused>(transport::Outcome { response, executed })
        }
    };
    match parsed {
        Body::Single(p) => match run(p).await {
            Ok(outcome) => transport::answer(media, outcome),
            Err(r) => transport::refusal(media, &r),
        },
        Body::Batch(ps) => {
            // One after the other, in order: a batch may hold mutations.
            let mut items = Vec::with_capacity(ps.len());
            for p in ps {
                items.push(run(p).await);
            }
            transport::answer_batch(media, items)
        }
    }
}

/// A credential that could not be checked (the store failed) or is refused for another reason
/// than being stale: a request error with the error's own code, and under
/// `application/graphql-response+json` the matching status.
fn refuse_credential(media: transport::MediaType, e: ApiError) -> Response {
    use axum::http::StatusCode;
    let status = match &e {
        ApiError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
        ApiError::Forbidden(_) | ApiError::MfaRequired(_) => StatusCode::FORBIDDEN,
        ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::BAD_REQUEST,
    };
    let err: async_graphql::Error = e.into();
    let mut resp = async_graphql::Response::from_errors(vec![
        err.into_server_error(async_graphql::Pos::default()),
    ]);
    crate::error::add_codes(&mut resp);
    transport::strip_empty_locations(&mut resp);
    let mut r = transport::answer(
        media,
        transport::Outcome {
            response: resp,
            executed: transport::Executed::default(),
        },
    );
    if media == transport::MediaType::GraphQLResponse {
        *r.status_mut() = status;
    }
    r
}

/// One schema for the process; the application state travels with each request (so a stopped
/// server's state is freed, and tests can run several servers in one process).
pub(crate) fn shared_schema() -> &'static UpkeepSchema {
    static SCHEMA: std::sync::OnceLock<UpkeepSchema> = std::sync::OnceLock::new();
    SCHEMA.get_or_init(|| schema(None))
}

/// Why the request's credential was refused (an expired token, a revoked key): what an
/// operation that needs a signed-in caller answers.
pub struct RefusedCredential(pub String);

/// The caller's address, for login throttling.
#[derive(Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

/// WebSocket subscriptions. Answers with the subprotocol it then speaks: the client's first
/// offered one that the server supports (see STACK.md P3); the connection itself is
/// [`ws::serve`]'s.
pub async fn ws_handler(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    _offered: GraphQLProtocol,
    upgrade: WebSocketUpgrade,
) -> Response {
    // The same choice GraphQLProtocol made (it refused the upgrade when there was none): the
    // client's first offered protocol we speak.
    let protocol = headers
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.split(',').find_map(|p| {
                p.trim()
                    .parse::<async_graphql::http::WebSocketProtocols>()
                    .ok()
            })
        })
        .unwrap_or(async_graphql::http::WebSocketProtocols::SubscriptionsTransportWS);
    upgrade
        .protocols([protocol.sec_websocket_protocol()])
        // tungstenite zero-fills its read buffer (128 KiB by default) on reads: with a thousand
        // subscribers that memset was a fifth of the server's CPU. Clients send little (init,
        // subscribe, pings); larger messages are still read, in more chunks.
        .read_buffer_size(4096)
        .max_message_size(ws::MAX_MESSAGE_BYTES)
        .max_frame_size(ws::MAX_MESSAGE_BYTES)
        .on_upgrade(move |socket| ws::serve(app, socket, protocol, peer))
        .into_response()
}

/// `/graphql` answers differ by `Accept` (GraphiQL, or the negotiated media type): caches keep
/// them apart.
pub async fn vary_accept(mut resp: Response) -> Response {
    resp.headers_mut().append(
        axum::http::header::VARY,
        axum::http::HeaderValue::from_static("accept"),
    );
    resp
}

/// Rewrites the transport-level refusals of `POST /graphql` (body too large, not a GraphQL
/// request) that the body-limit layer and async-graphql-axum answer in plain text into the
/// GraphQL error shape, so that clients always read `errors[0].extensions.code`.
pub async fn errors_as_graphql(resp: Response) -> Response {
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.starts_with("application/json") || v.starts_with("application/graphql-response+json")
        });
    if !status.is_client_error() || is_json {
        return resp;
    }
    let text = axum::body::to_bytes(resp.into_body(), 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let (code, message) = match status.as_u16() {
        413 => (
            "PAYLOAD_TOO_LARGE",
            "the request body is larger than 1 MiB".to_string(),
        ),
        415 => (
            "UNSUPPORTED_MEDIA_TYPE",
            format!("unsupported content type: {text}"),
        ),
        _ => ("BAD_REQUEST", format!("not a GraphQL request: {text}")),
    };
    let body = serde_json::json!({
        "errors": [{ "message": message, "extensions": { "code": code } }]
    });
    (status, axum::Json(body)).into_response()
}
