//! Schema migrations: the SQL files of `server/store/migrations/`, applied in version order at
//! open, inside one transaction that holds an advisory lock (so replicas starting together
//! apply each once), recorded in `upkeep_migrations`. Then the store's own schema version
//! (`meta/schema_version`, as in the embedded engine) is checked and written.

use crate::{Result, SCHEMA_VERSION, StoreError};

/// Every migration, in order: (version, name, SQL). Never edit one that shipped; add the next.
const MIGRATIONS: &[(i32, &str, &str)] = &[(1, "kv", include_str!("../../migrations/0001_kv.sql"))];

/// The advisory lock key that serialises migrations (any constant of our own: "upkeep" in hex).
const LOCK_KEY: i64 = 0x7570_6b65_6570;

/// Applies the pending migrations and checks the store's schema version. Returns the versions
/// it applied (for the test that shows a reopen applies none).
pub(super) async fn run(client: &mut deadpool_postgres::Client) -> Result<Vec<i32>> {
    let t = client.transaction().await?;
    t.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
        .await?;
    t.batch_execute(
        "CREATE TABLE IF NOT EXISTS upkeep_migrations (
            version integer PRIMARY KEY,
            name text NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .await?;
    let done: Option<i32> = t
        .query_one("SELECT max(version) FROM upkeep_migrations", &[])
        .await?
        .get(0);
    let done = done.unwrap_or(0);
    let newest = MIGRATIONS.last().map_or(0, |m| m.0);
    if done > newest {
        return Err(StoreError::Engine(format!(
            "the database was migrated by a newer Upkeep (migration {done}, this build knows {newest})"
        )));
    }
    let mut applied = Vec::new();
    for (version, name, sql) in MIGRATIONS.iter().filter(|m| m.0 > done) {
        t.batch_execute(sql).await?;
        t.execute(
            "INSERT INTO upkeep_migrations (version, name) VALUES ($1, $2)",
            &[version, name],
        )
        .await?;
        applied.push(*version);
    }
    store_schema(&t).await?;
    t.commit().await?;
    Ok(applied)
}

/// The store's schema version, kept in the meta space like the embedded engine keeps it.
async fn store_schema(t: &deadpool_postgres::Transaction<'_>) -> Result<()> {
    let row = t
        .query_opt(super::sql::GET, &[&"meta", &b"schema_version".as_slice()])
        .await?;
    let found = match row {
        Some(r) => {
            let v: Vec<u8> = r.get(0);
            u64::from_be_bytes(
                v.as_slice()
                    .try_into()
                    .map_err(|_| StoreError::Corrupt("schema_version".into()))?,
            )
        }
        None => 0,
    };
    if found > SCHEMA_VERSION {
        return Err(StoreError::TooNew {
            found,
            known: SCHEMA_VERSION,
        });
    }
    crate::migrate(found)?;
    if found == 1 {
        count_sessions(t).await?;
    }
    t.execute(
        "INSERT INTO upkeep_kv (space, key, value) VALUES ('meta', $1, $2)
         ON CONFLICT (space, key) DO UPDATE SET value = EXCLUDED.value",
        &[
            &b"schema_version".as_slice(),
            &SCHEMA_VERSION.to_be_bytes().as_slice(),
        ],
    )
    .await?;
    Ok(())
}

/// Schema 1 → 2: the session counters (`counts.rs`), counted from the stored sessions inside
/// the migration's transaction, under its advisory lock: replicas starting together count
/// once, and none serves before the counters are there.
async fn count_sessions(t: &deadpool_postgres::Transaction<'_>) -> Result<()> {
    let space = crate::Space::Records(crate::Kind::Session).name();
    let mut counts = std::collections::BTreeMap::new();
    let mut after: Vec<u8> = Vec::new();
    loop {
        let rows = t
            .query(
                "SELECT key, value FROM upkeep_kv WHERE space = $1 AND key > $2 \
                 ORDER BY key LIMIT 1000",
                &[&space, &after],
            )
            .await?;
        for r in &rows {
            let (k, v): (Vec<u8>, Vec<u8>) = (r.get(0), r.get(1));
            crate::counts::count_into(&mut counts, &k, &v)?;
        }
        match rows.last() {
            Some(r) if rows.len() == 1000 => after = r.get(0),
            _ => break,
        }
    }
    t.execute(
        "DELETE FROM upkeep_kv WHERE space = 'index' AND key >= $1 AND key < $2",
        &[
            &vec![crate::counts::COUNTER],
            &vec![crate::counts::COUNTER + 1],
        ],
    )
    .await?;
    let (keys, values): (Vec<Vec<u8>>, Vec<Vec<u8>>) = counts
        .into_iter()
        .map(|(k, n)| (k, n.to_be_bytes().to_vec()))
        .unzip();
    t.execute(
        "INSERT INTO upkeep_kv (space, key, value) \
         SELECT 'index', * FROM unnest($1::bytea[], $2::bytea[])",
        &[&keys, &values],
    )
    .await?;
    Ok(())
}
