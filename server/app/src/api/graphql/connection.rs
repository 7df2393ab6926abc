//! Relay connections: `first`/`after` forward, `last`/`before` backward, over keyset cursors.
//!
//! A cursor names a position in one list's order, not an item: the sort key of the item it was
//! made from and that item's id (the tie-break), with the list and its order, as base64url
//! JSON. Paging from it goes on correctly after its item was deleted, and a cursor from
//! another list or another `orderBy` is refused instead of read wrongly.

use crate::error::{ApiError, ApiResult};
use async_graphql::connection::PageInfo;
use async_graphql::{ComplexObject, ObjectType, OutputType, SimpleObject, TypeName};
use base64::Engine as _;
use futures_util::stream::{BoxStream, StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use upkeep_core::domain::Id;

/// Largest page a client may ask for (`first`/`last` above it are reduced to it).
pub const MAX_PAGE: usize = 500;
pub const DEFAULT_PAGE: usize = 50;

#[derive(SimpleObject, Default)]
pub struct Total {
    /// How many items match, on every page (cursors and page size aside).
    pub total_count: usize,
}

/// A page of a list: `<Node>Connection` in the schema. Ours rather than async-graphql's
/// `Connection`, which carries no description.
pub type Page<T, E = Total> = Conn<T, E>;

/// A page of a list (a Relay connection): its edges, each with a cursor to page from, its nodes
/// alone, and where it stands in the list.
#[derive(SimpleObject)]
#[graphql(name_type, complex)]
pub struct Conn<T: OutputType, E: ObjectType> {
    /// Whether items lie before and after this page, and the cursors of its first and last.
    pub page_info: PageInfo,
    /// The items of this page, each with its cursor.
    pub edges: Vec<PageEdge<T>>,
    #[graphql(flatten)]
    pub extra: E,
}

#[ComplexObject]
impl<T: OutputType, E: ObjectType> Conn<T, E> {
    /// The items of this page (the edges' nodes, without cursors).
    async fn nodes(&self) -> Vec<&T> {
        self.edges.iter().map(|e| &e.node).collect()
    }
}

impl<T: OutputType, E: ObjectType> TypeName for Conn<T, E> {
    fn type_name() -> std::borrow::Cow<'static, str> {
        format!("{}Connection", T::type_name()).into()
    }
}

// `<Node>Edge` in the schema.
/// One item of a page, with its cursor.
#[derive(SimpleObject)]
#[graphql(name_type)]
pub struct PageEdge<T: OutputType> {
    /// Where this item stands: give it as `after` or `before` to page from here (it stays
    /// good when the item is deleted).
    pub cursor: String,
    /// The item.
    pub node: T,
}

impl<T: OutputType> TypeName for PageEdge<T> {
    fn type_name() -> std::borrow::Cow<'static, str> {
        format!("{}Edge", T::type_name()).into()
    }
}

/// `first`/`last` when none is given: the default page.
pub fn page_size(first: Option<i32>) -> ApiResult<usize> {
    match first {
        None => Ok(DEFAULT_PAGE),
        Some(n) if n < 0 => Err(ApiError::bad("first", "must not be negative")),
        Some(n) => Ok((n as usize).min(MAX_PAGE)),
    }
}

/// What an item sorts by. Missing values sort lowest (first ascending, last descending).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SortKey {
    Null,
    Int(i64),
    Text(String),
}

impl SortKey {
    /// Names compare case-insensitively.
    pub fn text(s: &str) -> SortKey {
        SortKey::Text(s.to_lowercase())
    }
    pub fn time(t: Option<chrono::DateTime<chrono::Utc>>) -> SortKey {
        t.map_or(SortKey::Null, |t| SortKey::Int(t.timestamp_millis()))
    }
}

/// Where an item stands in an order: its key, then its id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Position {
    pub key: SortKey,
    pub id: Id,
}

impl Position {
    /// The position in an order by id alone (creation order: ids are UUIDv7).
    pub fn by_id(id: Id) -> Position {
        Position {
            key: SortKey::Null,
            id,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct CursorData {
    l: String,
    o: String,
    k: SortKey,
    i: Id,
}

/// One list in one order (`computers` by `NAME_ASC`, …): how its cursors read and compare.
#[derive(Clone, Debug)]
pub struct ListOrder {
    list: &'static str,
    tag: String,
    desc: bool,
}

impl ListOrder {
    /// `field` is the order field's GraphQL name (`NAME`); `desc` the direction.
    pub fn new(list: &'static str, field: &str, desc: bool) -> ListOrder {
        let dir = if desc { "DESC" } else { "ASC" };
        ListOrder {
            list,
            tag: format!("{field}_{dir}"),
            desc,
        }
    }

    pub fn is_desc(&self) -> bool {
        self.desc
    }

    pub fn cursor(&self, p: &Position) -> String {
        let data = CursorData {
            l: self.list.to_string(),
            o: self.tag.clone(),
            k: p.key.clone(),
            i: p.id,
        };
        let json = serde_json::to_vec(&data).unwrap_or_default();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
    }

    fn parse(&self, field: &str, s: &str) -> ApiResult<Position> {
        let bad = || ApiError::bad(field, "is not a cursor from this API");
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(s.as_bytes())
            .map_err(|_| bad())?;
        let d: CursorData = serde_json::from_slice(&bytes).map_err(|_| bad())?;
        if d.l != self.list {
            return Err(ApiError::bad(
                field,
                format!("is a cursor of `{}`, not of `{}`", d.l, self.list),
            ));
        }
        if d.o != self.tag {
            return Err(ApiError::bad(
                field,
                format!(
                    "is a cursor for orderBy {}, not {}: start again without a cursor when the order changes",
                    d.o, self.tag
                ),
            ));
        }
        Ok(Position { key: d.k, id: d.i })
    }

    /// How `a` and `b` compare in this order.
    pub fn cmp(&self, a: &Position, b: &Position) -> Ordering {
        let o = a.key.cmp(&b.key).then(a.id.cmp(&b.id));
        if self.desc { o.reverse() } else { o }
    }
}

/// The paging arguments of a connection field, as given.
#[derive(Default)]
pub struct PageArgs {
    pub first: Option<i32>,
    pub after: Option<String>,
    pub last: Option<i32>,
    pub before: Option<String>,
}

/// The paging arguments read in one order: how many, which way, between which positions.
pub struct Window {
    pub limit: usize,
    /// `last`: the page ends at `before` (or at the end) instead of starting at `after`.
    pub backward: bool,
    pub after: Option<Position>,
    pub before: Option<Position>,
}

impl PageArgs {
    pub fn window(&self, order: &ListOrder) -> ApiResult<Window> {
        let (limit, backward) = match (self.first, self.last) {
            (Some(_), Some(_)) => {
                return Err(ApiError::bad(
                    "last",
                    "give first or last, not both (first pages forward, last backward)",
                ));
            }
            (_, Some(n)) if n < 0 => return Err(ApiError::bad("last", "must not be negative")),
            (f, None) => (page_size(f)?, false),
            (None, Some(n)) => ((n as usize).min(MAX_PAGE), true),
        };
        Ok(Window {
            limit,
            backward,
            after: self
                .after
                .as_deref()
                .map(|a| order.parse("after", a))
                .transpose()?,
            before: self
                .before
                .as_deref()
                .map(|b| order.parse("before", b))
                .transpose()?,
        })
    }
}

/// One page: its items in order and whether items lie before and after it.
pub struct Slice<T> {
    pub items: Vec<T>,
    pub has_previous: bool,
    pub has_next: bool,
}

impl<T> Slice<T> {
    /// The connection of this page, with `extra` as its additional fields.
    pub fn into_connection<V: OutputType + From<T>, E: ObjectType>(
        self,
        order: &ListOrder,
        pos: impl Fn(&T) -> Position,
        extra: E,
    ) -> Page<V, E> {
        let edges: Vec<PageEdge<V>> = self
            .items
            .into_iter()
            .map(|n| PageEdge {
                cursor: order.cursor(&pos(&n)),
                node: V::from(n),
            })
            .collect();
        Conn {
            page_info: PageInfo {
                has_previous_page: self.has_previous,
                has_next_page: self.has_next,
                start_cursor: edges.first().map(|e| e.cursor.clone()),
                end_cursor: edges.last().map(|e| e.cursor.clone()),
            },
            edges,
            extra,
        }
    }
}

/// Pages a fully read list (a tenant's records, already filtered to what the caller sees):
/// sorts it in `order` and cuts the window. `hasPreviousPage`/`hasNextPage` are exact: items
/// exist before/after the page in the whole list.
pub fn slice_sorted<T>(
    all: Vec<T>,
    pos: impl Fn(&T) -> Position,
    order: &ListOrder,
    w: &Window,
) -> Slice<T> {
    let mut keyed: Vec<(Position, T)> = all.into_iter().map(|t| (pos(&t), t)).collect();
    keyed.sort_by(|a, b| order.cmp(&a.0, &b.0));
    let lo = match &w.after {
        Some(a) => keyed.partition_point(|(p, _)| order.cmp(p, a) != Ordering::Greater),
        None => 0,
    };
    let hi = match &w.before {
        Some(b) => keyed.partition_point(|(p, _)| order.cmp(p, b) == Ordering::Less),
        None => keyed.len(),
    }
    .max(lo);
    let (start, end) = if w.backward {
        (hi.saturating_sub(w.limit).max(lo), hi)
    } else {
        (lo, lo.saturating_add(w.limit).min(hi))
    };
    let len = keyed.len();
    Slice {
        items: keyed
            .into_iter()
            .skip(start)
            .take(end - start)
            .map(|(_, t)| t)
            .collect(),
        has_previous: start > 0,
        has_next: end < len,
    }
}

/// [`slice_sorted`] into a connection with `totalCount`.
pub fn page_sorted<T, V: OutputType + From<T>>(
    all: Vec<T>,
    pos: impl Fn(&T) -> Position + Copy,
    order: &ListOrder,
    args: &PageArgs,
) -> ApiResult<Page<V>> {
    let w = args.window(order)?;
    let total = all.len();
    Ok(slice_sorted(all, pos, order, &w).into_connection(order, pos, Total { total_count: total }))
}

/// Reads a list kept in id order by the store (an index or a kind's records), already
/// filtered: `walk(from, ascending)` streams the items strictly past `from` in that direction,
/// `get(id)` reads one (`None` when gone or filtered out).
pub struct IdOrdered<'a, T> {
    pub walk: Walk<'a, T>,
    pub get: Get<'a, T>,
    pub id_of: fn(&T) -> Id,
}

/// `walk(from, ascending)` of [`IdOrdered`].
pub type Walk<'a, T> =
    Box<dyn Fn(Option<Id>, bool) -> BoxStream<'a, ApiResult<T>> + Send + Sync + 'a>;
/// `get(id)` of [`IdOrdered`].
pub type Get<'a, T> =
    Box<dyn Fn(Id) -> futures_util::future::BoxFuture<'a, ApiResult<Option<T>>> + Send + Sync + 'a>;

impl<T: Send> IdOrdered<'_, T> {
    /// The window's page in `order` (by id, ascending or descending), reading at most one
    /// item more than the page plus two to answer `hasPreviousPage`/`hasNextPage`.
    pub async fn slice(&self, order: &ListOrder, w: &Window) -> ApiResult<Slice<T>> {
        // The direction the page is read in, and the bound it must not pass.
        let (from, bound, reading_up) = if w.backward {
            (&w.before, &w.after, order.is_desc())
        } else {
            (&w.after, &w.before, !order.is_desc())
        };
        let bound_id = bound.as_ref().map(|b| b.id);
        let within = move |id: Id| match bound_id {
            None => true,
            Some(b) if reading_up => id < b,
            Some(b) => id > b,
        };
        let id_of = self.id_of;
        let mut items: Vec<T> = (self.walk)(from.as_ref().map(|p| p.id), reading_up)
            .try_take_while(|t| std::future::ready(Ok(within(id_of(t)))))
            .take(w.limit + 1)
            .try_collect()
            .await?;
        let more = items.len() > w.limit;
        items.truncate(w.limit);
        // Items at or beyond the cursor the page started from lie on its other side.
        let behind = match from {
            Some(p) => self.exists_from(p.id, !reading_up).await?,
            None => false,
        };
        let ahead = more
            || match bound {
                Some(p) => self.exists_from(p.id, reading_up).await?,
                None => false,
            };
        if w.backward {
            items.reverse();
            Ok(Slice {
                items,
                has_previous: ahead,
                has_next: behind,
            })
        } else {
            Ok(Slice {
                items,
                has_previous: behind,
                has_next: ahead,
            })
        }
    }

    /// Is there an item at `id` or past it in the direction given?
    async fn exists_from(&self, id: Id, up: bool) -> ApiResult<bool> {
        if (self.get)(id).await?.is_some() {
            return Ok(true);
        }
        Ok((self.walk)(Some(id), up)
            .next()
            .await
            .transpose()?
            .is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(n: &(i64, u128)) -> Position {
        Position {
            key: SortKey::Int(n.0),
            id: Id::from_u128(n.1),
        }
    }

    fn window(o: &ListOrder, args: PageArgs) -> Window {
        args.window(o).unwrap_or_else(|e| panic!("{e:?}"))
    }

    #[test]
    fn pages_both_ways_and_a_cursor_outlives_its_item() {
        let o = ListOrder::new("things", "SIZE", false);
        let all: Vec<(i64, u128)> = (1..=5).map(|i| (10 * i, i as u128)).collect();
        let w = window(
            &o,
            PageArgs {
                first: Some(2),
                ..Default::default()
            },
        );
        let s = slice_sorted(all.clone(), pos, &o, &w);
        assert_eq!(s.items, vec![(10, 1), (20, 2)]);
        assert!(!s.has_previous && s.has_next);
        // The cursor of (20, 2), its item deleted: paging goes on at (30, 3).
        let c = o.cursor(&pos(&(20, 2)));
        let rest: Vec<_> = all.iter().copied().filter(|x| x.1 != 2).collect();
        let w = window(
            &o,
            PageArgs {
                first: Some(2),
                after: Some(c.clone()),
                ..Default::default()
            },
        );
        let s = slice_sorted(rest.clone(), pos, &o, &w);
        assert_eq!(s.items, vec![(30, 3), (40, 4)]);
        assert!(s.has_previous && s.has_next);
        let w = window(
            &o,
            PageArgs {
                last: Some(5),
                before: Some(c),
                ..Default::default()
            },
        );
        let s = slice_sorted(rest, pos, &o, &w);
        assert_eq!(s.items, vec![(10, 1)]);
        assert!(!s.has_previous && s.has_next);
    }

    #[test]
    fn a_cursor_of_another_order_or_list_is_refused() {
        let name = ListOrder::new("computers", "NAME", false);
        let c = name.cursor(&Position::by_id(Id::from_u128(1)));
        for other in [
            ListOrder::new("computers", "NAME", true),
            ListOrder::new("persons", "NAME", false),
        ] {
            let args = PageArgs {
                after: Some(c.clone()),
                ..Default::default()
            };
            assert!(args.window(&other).is_err());
        }
        let junk = PageArgs {
            before: Some("bm90IGEgY3Vyc29y".into()),
            ..Default::default()
        };
        assert!(junk.window(&name).is_err());
    }
}
