//! `upkeep-server migrate --from-data-dir DIR --to-database-url URL`: copies an embedded store
//! into an empty PostgreSQL store (cluster mode), space by space through the `Store` trait's
//! snapshot and batches, then compares every space's key count. The generated secrets (the JWT
//! key and `secret.key`) are copied into the database, where replicas read them
//! (`crate::secrets::shared`); installer files and the mail outbox files stay in the data dir
//! and are copied by hand to every replica's.

use std::path::Path;
use std::process::ExitCode;
use upkeep_store::{KeyRange, Space};

/// What a migration copied.
#[derive(Debug, PartialEq, Eq)]
pub struct Migrated {
    pub records: usize,
    pub spaces: usize,
    pub secrets: usize,
}

/// Copies the store of `data_dir` into the empty PostgreSQL store at `url` and checks counts.
pub async fn migrate(data_dir: &Path, url: &str) -> anyhow::Result<Migrated> {
    use anyhow::Context as _;
    // sled would create a new, empty store: say what is wrong instead.
    anyhow::ensure!(
        data_dir.join("store").is_dir(),
        "{} holds no embedded store (no store/ directory)",
        data_dir.display()
    );
    let from = upkeep_store::open_embedded(data_dir)
        .with_context(|| format!("cannot open the store in {}", data_dir.display()))?;
    let to = upkeep_store::open_postgres(url)
        .await
        .context("cannot open the PostgreSQL store (--to-database-url)")?;
    anyhow::ensure!(
        to.is_empty().await?,
        "the database already holds Upkeep data; migrate into a new, empty database"
    );
    let snapshot = from.snapshot().await?;
    to.load_snapshot(&snapshot).await?;
    let mut records = 0;
    for (name, entries) in &snapshot {
        let space = Space::from_name(name)
            .ok_or_else(|| anyhow::anyhow!("the store has an unknown space {name}"))?;
        if space == Space::Meta {
            // The database may hold keys of its own here (keys a replica claimed): each of
            // the data dir's must be there as it was.
            for (k, v) in entries {
                anyhow::ensure!(
                    to.read(space, k).await?.as_ref() == Some(v),
                    "space meta: a key was not copied"
                );
            }
            records += entries.len();
            continue;
        }
        let copied = to.count_range(space, &KeyRange::all()).await?;
        anyhow::ensure!(
            copied == entries.len() as u64,
            "space {name}: {} keys in the data dir but {copied} in the database",
            entries.len()
        );
        records += entries.len();
    }
    let secrets = crate::secrets::shared::copy_from_data_dir(&to, data_dir).await?;
    Ok(Migrated {
        records,
        spaces: snapshot.len(),
        secrets,
    })
}

/// The command: one line on success, one on failure.
pub async fn run(data_dir: &Path, url: &str) -> ExitCode {
    match migrate(data_dir, url).await {
        Ok(m) => {
            println!(
                "migrated {} records in {} spaces from {} into PostgreSQL; counts match",
                m.records,
                m.spaces,
                data_dir.display()
            );
            println!(
                "copied {} generated secrets (JWT key, secret.key) into the database; copy {}/files/ \
                 (installer files) to every replica's data dir by hand",
                m.secrets,
                data_dir.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("upkeep-server migrate: {e:#}");
            ExitCode::FAILURE
        }
    }
}
