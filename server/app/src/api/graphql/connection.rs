//! Relay connections over store iterators: `first`/`after` with the record id as cursor, and
//! `totalCount`.

use crate::error::{ApiError, ApiResult};
use async_graphql::connection::{Connection, Edge};
use async_graphql::{OutputType, SimpleObject};
use futures_util::StreamExt;
use upkeep_core::domain::Id;

/// Largest page a client may ask for.
pub const MAX_PAGE: usize = 500;
pub const DEFAULT_PAGE: usize = 50;

#[derive(SimpleObject, Default)]
pub struct Total {
    pub total_count: usize,
}

pub type Page<T> = Connection<String, T, Total>;

pub fn page_size(first: Option<i32>) -> ApiResult<usize> {
    match first {
        None => Ok(DEFAULT_PAGE),
        Some(n) if n < 0 => Err(ApiError::bad("first", "must not be negative")),
        Some(n) => Ok((n as usize).min(MAX_PAGE)),
    }
}

pub fn parse_cursor(after: Option<&str>) -> ApiResult<Option<Id>> {
    after
        .map(|a| {
            a.parse::<Id>()
                .map_err(|_| ApiError::bad("after", "is not a cursor from this API"))
        })
        .transpose()
}

/// Builds a page from `items` (already filtered to what the actor sees and started after the
/// cursor): takes `first`, looks one further for `hasNextPage`.
/// Nodes are shown as `V` (a view of the record, `View<T>`, or the record itself).
pub fn build<T, V: OutputType + From<T>>(
    items: impl Iterator<Item = ApiResult<T>>,
    id_of: impl Fn(&T) -> Id,
    first: usize,
    total: usize,
    has_previous: bool,
) -> ApiResult<Page<V>> {
    let mut nodes = Vec::with_capacity(first.min(64));
    let mut has_next = false;
    for item in items {
        let item = item?;
        if nodes.len() == first {
            has_next = true;
            break;
        }
        nodes.push(item);
    }
    let mut c =
        Connection::with_additional_fields(has_previous, has_next, Total { total_count: total });
    c.edges.extend(
        nodes
            .into_iter()
            .map(|n| Edge::new(id_of(&n).to_string(), V::from(n))),
    );
    Ok(c)
}

/// [`build`] over a stream: reads at most `first + 1` items.
pub async fn build_stream<T, V: OutputType + From<T>>(
    items: impl futures_util::Stream<Item = ApiResult<T>>,
    id_of: impl Fn(&T) -> Id,
    first: usize,
    total: usize,
    has_previous: bool,
) -> ApiResult<Page<V>> {
    use futures_util::TryStreamExt;
    let head: Vec<T> = std::pin::pin!(items).take(first + 1).try_collect().await?;
    build(head.into_iter().map(Ok), id_of, first, total, has_previous)
}

/// Pages a fully materialised, already ordered list (small lists: tenants, catalogue).
pub fn from_vec<T, V: OutputType + From<T>>(
    all: Vec<T>,
    id_of: impl Fn(&T) -> Id,
    first: Option<i32>,
    after: Option<String>,
) -> ApiResult<Page<V>> {
    let first = page_size(first)?;
    let after = parse_cursor(after.as_deref())?;
    let total = all.len();
    let start = match after {
        Some(a) => all
            .iter()
            .position(|x| id_of(x) == a)
            .map(|p| p + 1)
            .unwrap_or(all.len()),
        None => 0,
    };
    build(
        all.into_iter().skip(start).map(Ok),
        id_of,
        first,
        total,
        start > 0,
    )
}
