//! The engine's SQL: point reads, ranges over `ORDER BY key`, and writes as two array statements.

use crate::interface::{KeyRange, Space};
use std::ops::Bound;
use tokio_postgres::types::ToSql;

pub(super) const GET: &str = "SELECT value FROM upkeep_kv WHERE space = $1 AND key = $2";
pub(super) const SCAN: &str = "SELECT key, value FROM upkeep_kv WHERE space = $1 ORDER BY key";
/// Sets a key unless it is set ([`crate::Store::claim`]).
pub(super) const CLAIM: &str = "INSERT INTO upkeep_kv (space, key, value) VALUES ($1, $2, $3) \
    ON CONFLICT (space, key) DO NOTHING";
const UPSERT: &str = "INSERT INTO upkeep_kv (space, key, value) \
    SELECT * FROM unnest($1::text[], $2::bytea[], $3::bytea[]) \
    ON CONFLICT (space, key) DO UPDATE SET value = EXCLUDED.value";
const DELETE: &str = "DELETE FROM upkeep_kv WHERE (space, key) IN \
    (SELECT * FROM unnest($1::text[], $2::bytea[]))";

/// A range query over one space: its SQL (one of a few shapes, so prepared statements are
/// cached) and what it binds.
pub(super) struct Range<'a> {
    pub(super) sql: String,
    space: &'static str,
    bounds: Vec<&'a Vec<u8>>,
    limit: Option<&'a i64>,
}

impl<'a> Range<'a> {
    /// `SELECT {columns}` over `range` of `space`, in its direction, up to `limit` rows.
    pub(super) fn new(
        space: Space,
        range: &'a KeyRange,
        columns: &str,
        limit: Option<&'a i64>,
    ) -> Range<'a> {
        let mut sql = format!("SELECT {columns} FROM upkeep_kv WHERE space = $1");
        let mut bounds = Vec::new();
        for (bound, incl, excl) in [(&range.start, ">=", ">"), (&range.end, "<=", "<")] {
            let (op, key) = match bound {
                Bound::Included(k) => (incl, k),
                Bound::Excluded(k) => (excl, k),
                Bound::Unbounded => continue,
            };
            bounds.push(key);
            sql.push_str(&format!(" AND key {op} ${}", bounds.len() + 1));
        }
        if limit.is_some() {
            let dir = if range.reverse { "DESC" } else { "ASC" };
            sql.push_str(&format!(" ORDER BY key {dir} LIMIT ${}", bounds.len() + 2));
        }
        Range {
            sql,
            space: space.name(),
            bounds,
            limit,
        }
    }

    pub(super) fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        let mut p: Vec<&(dyn ToSql + Sync)> = vec![&self.space];
        p.extend(self.bounds.iter().map(|b| *b as &(dyn ToSql + Sync)));
        if let Some(l) = self.limit {
            p.push(l);
        }
        p
    }
}

/// Applies `writes` (a value to set, or `None` to remove; each key at most once) in `t`.
pub(super) async fn write_all(
    t: &deadpool_postgres::Transaction<'_>,
    writes: impl Iterator<Item = ((Space, Vec<u8>), Option<Vec<u8>>)>,
) -> Result<(), tokio_postgres::Error> {
    let (mut set, mut del) = (
        (Vec::new(), Vec::new(), Vec::new()),
        (Vec::new(), Vec::new()),
    );
    for ((space, key), value) in writes {
        match value {
            Some(v) => {
                set.0.push(space.name());
                set.1.push(key);
                set.2.push(v);
            }
            None => {
                del.0.push(space.name());
                del.1.push(key);
            }
        }
    }
    if !set.0.is_empty() {
        let stmt = t.prepare_cached(UPSERT).await?;
        t.execute(&stmt, &[&set.0, &set.1, &set.2]).await?;
    }
    if !del.0.is_empty() {
        let stmt = t.prepare_cached(DELETE).await?;
        t.execute(&stmt, &[&del.0, &del.1]).await?;
    }
    Ok(())
}
