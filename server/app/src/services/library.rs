//! A library of software and maintenance tasks kept as files (`library/` in the repository):
//! one entry per YAML or JSON file, loaded, checked as a whole, and imported into the catalogue
//! in one transaction (`upkeep-server import-library DIR`, `--library DIR` at start).
//!
//! Entries are matched by name within their scope (MSP-level, or one tenant's with
//! `--tenant`): a new name creates a record, a known one is updated in place (its id, and so
//! every deployment of it, stays), an entry that would change nothing is not written. A tenant
//! overrides an MSP-level entry by importing its own version under the same name into its
//! scope and deploying that one.

use crate::error::{ApiError, ApiResult};
use futures_util::StreamExt;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use upkeep_core::domain::*;
use upkeep_core::params::ParameterDefinition;
use upkeep_store::records::{TENANT_SOFTWARE, TENANT_TASKS, tenant_key};
use upkeep_store::{Db, IndexKey, TxError};

/// Largest library file read.
const MAX_FILE_BYTES: u64 = 1024 * 1024;
/// Most entries one library may hold.
const MAX_ENTRIES: usize = 2000;
/// Longest script body (as the API allows).
const MAX_SCRIPT_BYTES: usize = 256 * 1024;

/// One library file.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Entry {
    Software(SoftwareEntry),
    Task(TaskEntry),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScriptEntry {
    pub language: ScriptLanguage,
    pub body: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VersionEntry {
    pub version: String,
    pub install_script: ScriptEntry,
    #[serde(default)]
    pub upgrade_script: Option<ScriptEntry>,
    /// A vendor download the agent fetches and verifies before the install script runs.
    #[serde(default)]
    pub installer: Option<InstallerEntry>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InstallerEntry {
    /// `https://` only.
    pub url: String,
    pub sha256: String,
    #[serde(default)]
    pub size: Option<u64>,
    #[serde(default)]
    pub file_name: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SoftwareEntry {
    pub name: String,
    /// Which computers it is written for (`windows`, `debian`, …); for people.
    #[serde(default)]
    pub os: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    pub detection_script: ScriptEntry,
    #[serde(default)]
    pub versions: Vec<VersionEntry>,
    #[serde(default)]
    pub versions_script: Option<ScriptEntry>,
    #[serde(default)]
    pub versions_cache_minutes: Option<u32>,
    #[serde(default)]
    pub install_script: Option<ScriptEntry>,
    #[serde(default)]
    pub upgrade_script: Option<ScriptEntry>,
    #[serde(default)]
    pub uninstall_script: Option<ScriptEntry>,
    /// Names of prerequisite software (in the library or already in the catalogue's scope).
    #[serde(default)]
    pub depends_on: Vec<String>,
    /// Name of the configuration task (in the library or the catalogue's scope).
    #[serde(default)]
    pub configuration_task: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TaskEntry {
    pub name: String,
    #[serde(default)]
    pub os: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    pub test_script: ScriptEntry,
    #[serde(default)]
    pub set_script: Option<ScriptEntry>,
    #[serde(default)]
    pub get_script: Option<ScriptEntry>,
    #[serde(default)]
    pub parameters: Vec<ParameterDefinition>,
}

/// A library read from a directory: every entry with the file it came from.
#[derive(Debug, Clone, Default)]
pub struct Library {
    pub entries: Vec<(PathBuf, Entry)>,
}

/// What an import did, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub created: Vec<String>,
    pub updated: Vec<String>,
    pub unchanged: Vec<String>,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} created, {} updated, {} unchanged",
            self.created.len(),
            self.updated.len(),
            self.unchanged.len()
        )
    }
}

/// Why a library cannot be loaded or imported; the text names the file and field.
#[derive(Debug, thiserror::Error)]
pub enum LibraryError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] ApiError),
}

fn invalid(file: &Path, what: impl std::fmt::Display) -> LibraryError {
    LibraryError::Invalid(format!("{}: {what}", file.display()))
}

impl Library {
    /// Reads every `*.yaml`, `*.yml` and `*.json` file under `dir` (subdirectories too, in
    /// name order) and checks the library as a whole: each entry valid, names unique per
    /// kind, every name an entry refers to present in the library or in `known`.
    pub fn load(dir: &Path) -> Result<Library, LibraryError> {
        let mut files = Vec::new();
        collect(dir, &mut files, 0)?;
        files.sort();
        let mut lib = Library::default();
        for file in files {
            if lib.entries.len() == MAX_ENTRIES {
                return Err(invalid(dir, format!("more than {MAX_ENTRIES} entries")));
            }
            let entry = read_entry(&file)?;
            check_entry(&file, &entry)?;
            lib.entries.push((file, entry));
        }
        lib.check_names()?;
        Ok(lib)
    }

    fn check_names(&self) -> Result<(), LibraryError> {
        let mut software = BTreeSet::new();
        let mut tasks = BTreeSet::new();
        for (file, e) in &self.entries {
            let (set, name) = match e {
                Entry::Software(s) => (&mut software, &s.name),
                Entry::Task(t) => (&mut tasks, &t.name),
            };
            if !set.insert(name.to_lowercase()) {
                return Err(invalid(file, format!("a second entry named '{name}'")));
            }
        }
        Ok(())
    }

    fn software(&self) -> impl Iterator<Item = (&PathBuf, &SoftwareEntry)> {
        self.entries.iter().filter_map(|(f, e)| match e {
            Entry::Software(s) => Some((f, s)),
            Entry::Task(_) => None,
        })
    }

    fn tasks(&self) -> impl Iterator<Item = (&PathBuf, &TaskEntry)> {
        self.entries.iter().filter_map(|(f, e)| match e {
            Entry::Task(t) => Some((f, t)),
            Entry::Software(_) => None,
        })
    }
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>, depth: usize) -> Result<(), LibraryError> {
    if depth > 4 {
        return Ok(());
    }
    let read = std::fs::read_dir(dir).map_err(|e| invalid(dir, format!("cannot read: {e}")))?;
    for item in read {
        let path = item
            .map_err(|e| invalid(dir, format!("cannot read: {e}")))?
            .path();
        if path.is_dir() {
            collect(&path, out, depth + 1)?;
        } else if matches!(
            path.extension().and_then(|x| x.to_str()),
            Some("yaml" | "yml" | "json")
        ) {
            out.push(path);
        }
    }
    Ok(())
}

fn read_entry(file: &Path) -> Result<Entry, LibraryError> {
    let meta = std::fs::metadata(file).map_err(|e| invalid(file, e))?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(invalid(file, format!("larger than {MAX_FILE_BYTES} bytes")));
    }
    let text = std::fs::read_to_string(file).map_err(|e| invalid(file, e))?;
    if file.extension().and_then(|x| x.to_str()) == Some("json") {
        serde_json::from_str(&text).map_err(|e| invalid(file, e))
    } else {
        yaml_serde::from_str(&text).map_err(|e| invalid(file, e))
    }
}

fn script(file: &Path, field: &str, s: &ScriptEntry) -> Result<Script, LibraryError> {
    if s.body.trim().is_empty() || s.body.len() > MAX_SCRIPT_BYTES {
        return Err(invalid(
            file,
            format!("{field}: the body must be 1 byte to 256 KiB"),
        ));
    }
    Ok(Script {
        language: s.language,
        body: s.body.clone(),
    })
}

fn opt_script(
    file: &Path,
    field: &str,
    s: &Option<ScriptEntry>,
) -> Result<Option<Script>, LibraryError> {
    s.as_ref().map(|s| script(file, field, s)).transpose()
}

fn check_name(file: &Path, name: &str) -> Result<(), LibraryError> {
    if name.trim().is_empty() || name.chars().count() > 200 || name.chars().any(char::is_control) {
        return Err(invalid(
            file,
            "name: 1 to 200 characters, no control characters",
        ));
    }
    Ok(())
}

fn check_entry(file: &Path, e: &Entry) -> Result<(), LibraryError> {
    match e {
        Entry::Software(s) => {
            check_name(file, &s.name)?;
            versions(file, s)?;
            if s.versions.is_empty() && s.versions_script.is_none() {
                return Err(invalid(file, "give versions or a versionsScript"));
            }
            if s.versions_script.is_some() && s.install_script.is_none() {
                return Err(invalid(
                    file,
                    "a versionsScript needs the installScript that installs what it finds",
                ));
            }
            if s.versions_cache_minutes.is_some_and(|m| m > 7 * 24 * 60) {
                return Err(invalid(file, "versionsCacheMinutes: at most a week"));
            }
            if s.depends_on.len() > upkeep_core::engine::plan::MAX_PREREQUISITES {
                return Err(invalid(file, "dependsOn: too many"));
            }
            software_record(
                file,
                s,
                Id::from_u128(0),
                None,
                Time::default(),
                &|_| None,
                None,
            )
            .map(drop)
        }
        Entry::Task(t) => {
            check_name(file, &t.name)?;
            task_record(file, t, Id::from_u128(0), None, Time::default()).map(drop)
        }
    }
}

fn versions(file: &Path, s: &SoftwareEntry) -> Result<Vec<SoftwareVersion>, LibraryError> {
    let mut out: Vec<SoftwareVersion> = Vec::new();
    for (i, v) in s.versions.iter().enumerate() {
        let ver = v.version.trim();
        if !upkeep_core::version::valid_text(ver) {
            return Err(invalid(
                file,
                format!("versions[{i}]: '{ver}' is not a version like 1.10.0"),
            ));
        }
        if out
            .iter()
            .any(|o| upkeep_core::version::compare(&o.version, ver).is_eq())
        {
            return Err(invalid(
                file,
                format!("versions[{i}]: {ver} is listed twice"),
            ));
        }
        out.push(SoftwareVersion {
            version: ver.to_string(),
            install_script: script(
                file,
                &format!("versions[{i}].installScript"),
                &v.install_script,
            )?,
            upgrade_script: opt_script(
                file,
                &format!("versions[{i}].upgradeScript"),
                &v.upgrade_script,
            )?,
            installer: match &v.installer {
                Some(x) => Some(installer(file, i, x)?),
                None => None,
            },
        });
    }
    Ok(out)
}

fn installer(file: &Path, i: usize, x: &InstallerEntry) -> Result<Installer, LibraryError> {
    let sha256 = x.sha256.to_ascii_lowercase();
    if !Installer::is_sha256(&sha256) {
        return Err(invalid(
            file,
            format!("versions[{i}].installer.sha256: 64 hex digits"),
        ));
    }
    if !x.url.starts_with("https://") || x.url.len() > upkeep_core::versions::MAX_URL_CHARS {
        return Err(invalid(
            file,
            format!("versions[{i}].installer.url: https:// only"),
        ));
    }
    Ok(Installer {
        sha256,
        size: x.size,
        url: Some(x.url.clone()),
        file_name: x.file_name.clone(),
    })
}

/// The software record an entry describes; `ids` finds a software id by name (prerequisites),
/// `task` is the configuration task's id.
// long: a field-by-field conversion; splitting it would only scatter the record.
fn software_record(
    file: &Path,
    s: &SoftwareEntry,
    id: Id,
    tenant: Option<Id>,
    created_at: Time,
    ids: &dyn Fn(&str) -> Option<Id>,
    task: Option<Id>,
) -> Result<Software, LibraryError> {
    let mut depends_on = Vec::new();
    for name in &s.depends_on {
        // While checking a single entry (`ids` knows nothing) names are checked at import.
        if let Some(d) = ids(&name.to_lowercase()) {
            depends_on.push(d);
        }
    }
    Ok(Software {
        id,
        tenant_id: tenant,
        name: s.name.trim().to_string(),
        detection_script: script(file, "detectionScript", &s.detection_script)?,
        versions: versions(file, s)?,
        uninstall_script: opt_script(file, "uninstallScript", &s.uninstall_script)?,
        configuration_task_id: task,
        created_at,
        versions_script: opt_script(file, "versionsScript", &s.versions_script)?,
        versions_cache_minutes: s
            .versions_cache_minutes
            .unwrap_or(DEFAULT_VERSIONS_CACHE_MINUTES),
        install_script: opt_script(file, "installScript", &s.install_script)?,
        upgrade_script: opt_script(file, "upgradeScript", &s.upgrade_script)?,
        depends_on,
    })
}

fn task_record(
    file: &Path,
    t: &TaskEntry,
    id: Id,
    tenant: Option<Id>,
    created_at: Time,
) -> Result<MaintenanceTask, LibraryError> {
    upkeep_core::params::check_definitions(&t.parameters)
        .map_err(|e| invalid(file, format!("parameters: {}", e.0)))?;
    Ok(MaintenanceTask {
        id,
        tenant_id: tenant,
        name: t.name.trim().to_string(),
        test_script: script(file, "testScript", &t.test_script)?,
        set_script: opt_script(file, "setScript", &t.set_script)?,
        get_script: opt_script(file, "getScript", &t.get_script)?,
        parameters: t.parameters.clone(),
        created_at,
    })
}

/// What the catalogue's scope already holds, by lower-cased name.
struct Scope {
    software: BTreeMap<String, Software>,
    tasks: BTreeMap<String, MaintenanceTask>,
}

async fn scope(store: &Db, tenant: Option<Id>) -> ApiResult<Scope> {
    let mut software = BTreeMap::new();
    let key = IndexKey::new(TENANT_SOFTWARE, tenant_key(tenant));
    let mut s = std::pin::pin!(store.by_index::<Software>(&key, None));
    while let Some(r) = s.next().await {
        let r = r?;
        software.insert(r.name.to_lowercase(), r);
    }
    let mut tasks = BTreeMap::new();
    let key = IndexKey::new(TENANT_TASKS, tenant_key(tenant));
    let mut t = std::pin::pin!(store.by_index::<MaintenanceTask>(&key, None));
    while let Some(r) = t.next().await {
        let r = r?;
        tasks.insert(r.name.to_lowercase(), r);
    }
    Ok(Scope { software, tasks })
}

/// Imports `lib` into the catalogue (MSP-level, or `tenant`'s, which must exist) in one
/// transaction, then flushes. Prerequisite cycles within the result are refused.
pub async fn import(
    store: &Db,
    lib: &Library,
    tenant: Option<Id>,
    now: Time,
    fresh_id: &(dyn Fn() -> Id + Sync),
) -> Result<Report, LibraryError> {
    if let Some(t) = tenant
        && store
            .get::<Tenant>(&t)
            .await
            .map_err(ApiError::from)?
            .is_none()
    {
        return Err(LibraryError::Invalid(format!("no tenant {t}")));
    }
    let have = scope(store, tenant).await?;
    let mut report = Report::default();
    let (tasks, task_ids) = import_tasks(lib, &have, tenant, now, fresh_id, &mut report)?;
    let software_ids = software_ids(lib, &have, fresh_id);
    let mut all: BTreeMap<Id, Software> =
        have.software.values().map(|s| (s.id, s.clone())).collect();
    let mut software = Vec::new();
    for (file, s) in lib.software() {
        for d in &s.depends_on {
            if !software_ids.contains_key(&d.to_lowercase()) {
                return Err(invalid(file, format!("dependsOn: no software named '{d}'")));
            }
        }
        let task =
            match &s.configuration_task {
                Some(n) => Some(*task_ids.get(&n.to_lowercase()).ok_or_else(|| {
                    invalid(file, format!("configurationTask: no task named '{n}'"))
                })?),
                None => None,
            };
        let old = have.software.get(&s.name.to_lowercase());
        let id = software_ids[&s.name.to_lowercase()];
        let lookup = |n: &str| software_ids.get(n).copied();
        let rec = software_record(
            file,
            s,
            id,
            tenant,
            old.map_or(now, |o| o.created_at),
            &lookup,
            task,
        )?;
        note(&mut report, old, &rec, &rec.name);
        all.insert(rec.id, rec.clone());
        if old.is_none_or(|o| !same(o, &rec)) {
            software.push(rec);
        }
    }
    if let Some(cycle) = find_cycle(&all) {
        return Err(LibraryError::Invalid(format!(
            "prerequisites make a cycle: {cycle}"
        )));
    }
    store
        .write(|tx| {
            for t in &tasks {
                tx.put(t)?;
            }
            for s in &software {
                tx.put(s)?;
            }
            Ok::<_, TxError<ApiError>>(())
        })
        .await
        .map_err(ApiError::from)?;
    store.flush().await.map_err(ApiError::from)?;
    Ok(report)
}

fn same<T: serde::Serialize>(a: &T, b: &T) -> bool {
    serde_json::to_value(a).ok() == serde_json::to_value(b).ok()
}

fn note<T: serde::Serialize>(r: &mut Report, old: Option<&T>, new: &T, name: &str) {
    match old {
        None => r.created.push(name.to_string()),
        Some(o) if same(o, new) => r.unchanged.push(name.to_string()),
        Some(_) => r.updated.push(name.to_string()),
    }
}

/// Every software id by lower-cased name: the scope's, and the library's (kept where the name
/// is known, fresh where not).
fn software_ids(
    lib: &Library,
    have: &Scope,
    fresh_id: &(dyn Fn() -> Id + Sync),
) -> BTreeMap<String, Id> {
    let mut ids: BTreeMap<String, Id> = have
        .software
        .iter()
        .map(|(n, s)| (n.clone(), s.id))
        .collect();
    for (_, s) in lib.software() {
        let id = have
            .software
            .get(&s.name.to_lowercase())
            .map_or_else(fresh_id, |o| o.id);
        ids.insert(s.name.to_lowercase(), id);
    }
    ids
}

/// The task records an import writes (new or changed) and every task id by lower-cased name.
fn import_tasks(
    lib: &Library,
    have: &Scope,
    tenant: Option<Id>,
    now: Time,
    fresh_id: &(dyn Fn() -> Id + Sync),
    report: &mut Report,
) -> Result<(Vec<MaintenanceTask>, BTreeMap<String, Id>), LibraryError> {
    let mut tasks: Vec<MaintenanceTask> = Vec::new();
    let mut task_ids: BTreeMap<String, Id> =
        have.tasks.iter().map(|(n, t)| (n.clone(), t.id)).collect();
    for (file, t) in lib.tasks() {
        let old = have.tasks.get(&t.name.to_lowercase());
        let id = old.map_or_else(fresh_id, |o| o.id);
        let rec = task_record(file, t, id, tenant, old.map_or(now, |o| o.created_at))?;
        task_ids.insert(t.name.to_lowercase(), id);
        note(report, old, &rec, &rec.name);
        if old.is_none_or(|o| !same(o, &rec)) {
            tasks.push(rec);
        }
    }
    Ok((tasks, task_ids))
}

/// A prerequisite cycle among `all`, as names joined by arrows.
fn find_cycle(all: &BTreeMap<Id, Software>) -> Option<String> {
    // Colours: absent = unvisited, false = on the path, true = done.
    fn visit(
        id: Id,
        all: &BTreeMap<Id, Software>,
        state: &mut BTreeMap<Id, bool>,
        path: &mut Vec<Id>,
    ) -> Option<Vec<Id>> {
        match state.get(&id) {
            Some(true) => return None,
            Some(false) => {
                let start = path.iter().position(|p| *p == id).unwrap_or(0);
                let mut cycle = path[start..].to_vec();
                cycle.push(id);
                return Some(cycle);
            }
            None => {}
        }
        state.insert(id, false);
        path.push(id);
        for d in all.get(&id).map(|s| s.depends_on.as_slice()).unwrap_or(&[]) {
            if let Some(c) = visit(*d, all, state, path) {
                return Some(c);
            }
        }
        path.pop();
        state.insert(id, true);
        None
    }
    let mut state = BTreeMap::new();
    for id in all.keys() {
        if let Some(c) = visit(*id, all, &mut state, &mut Vec::new()) {
            let names: Vec<&str> = c
                .iter()
                .map(|i| all.get(i).map_or("?", |s| s.name.as_str()))
                .collect();
            return Some(names.join(" → "));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo_library() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../library")
    }

    fn ids() -> impl Fn() -> Id {
        let n = std::sync::atomic::AtomicU64::new(1);
        move || {
            Id::from_u128(u128::from(
                n.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            ))
        }
    }

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    const TASK: &str = "kind: task\nname: T\ntestScript: {language: SHELL, body: 'exit 0'}\n";
    const SOFTWARE: &str = "kind: software\nname: S\ndetectionScript: {language: SHELL, body: 'true'}\nversions: [{version: '1.0', installScript: {language: SHELL, body: 'true'}}]\n";

    /// Every entry of the shipped library (Windows ones too) passes the import's checks, and
    /// imports as a whole: twice is the same as once.
    #[tokio::test]
    async fn the_shipped_library_is_valid_and_imports_once() {
        let lib = Library::load(&repo_library()).unwrap();
        let (sw, tasks) = (lib.software().count(), lib.tasks().count());
        assert!(sw >= 7 && tasks >= 5, "{sw} software, {tasks} tasks");
        for os in ["windows", "debian"] {
            assert!(
                lib.software().any(|(_, s)| s.os.as_deref() == Some(os))
                    && lib.tasks().any(|(_, t)| t.os.as_deref() == Some(os)),
                "entries for {os}"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let store = upkeep_store::open_embedded(dir.path()).unwrap();
        let now = chrono::Utc::now();
        let first = import(&store, &lib, None, now, &ids()).await.unwrap();
        assert_eq!(first.created.len(), sw + tasks, "{first:?}");
        let again = import(&store, &lib, None, now, &ids()).await.unwrap();
        assert_eq!(
            (again.created.len(), again.updated.len()),
            (0, 0),
            "{again:?}"
        );
        assert_eq!(again.unchanged.len(), sw + tasks);
        // The configuration task and the parameters came through.
        let have = scope(&store, None).await.unwrap();
        let uu = &have.software["unattended-upgrades"];
        assert_eq!(
            uu.configuration_task_id,
            Some(have.tasks["turn on unattended upgrades"].id)
        );
        let bitlocker = &have.tasks["enable bitlocker"];
        assert_eq!(bitlocker.parameters.len(), 3);
        assert_eq!(bitlocker.parameters[1].options, ["XtsAes128", "XtsAes256"]);
    }

    #[tokio::test]
    async fn an_entry_changed_in_the_library_updates_the_record_in_place() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "s.yaml", SOFTWARE);
        let data = tempfile::tempdir().unwrap();
        let store = upkeep_store::open_embedded(data.path()).unwrap();
        let now = chrono::Utc::now();
        import(
            &store,
            &Library::load(dir.path()).unwrap(),
            None,
            now,
            &ids(),
        )
        .await
        .unwrap();
        let before = scope(&store, None).await.unwrap().software["s"].clone();
        write(dir.path(), "s.yaml", &SOFTWARE.replace("'1.0'", "'2.0'"));
        let r = import(
            &store,
            &Library::load(dir.path()).unwrap(),
            None,
            now,
            &ids(),
        )
        .await
        .unwrap();
        assert_eq!(r.updated, ["S"]);
        let after = scope(&store, None).await.unwrap().software["s"].clone();
        assert_eq!(
            (after.id, after.versions[0].version.as_str()),
            (before.id, "2.0")
        );
    }

    #[tokio::test]
    async fn a_bad_library_is_refused_whole_naming_the_file() {
        let cases: [(&str, String, &str); 6] = [
            (
                "a.yaml",
                format!("{TASK}colour: blue\n"),
                "unknown field `colour`",
            ),
            (
                "a.yaml",
                "kind: widget\nname: W\n".into(),
                "unknown variant `widget`",
            ),
            ("a.json", "{\"kind\": \"task\"".into(), "a.json"),
            (
                "a.yaml",
                format!("{SOFTWARE}dependsOn: [Nothing]\n"),
                "no software named 'Nothing'",
            ),
            (
                "a.yaml",
                format!("{TASK}parameters: [{{name: bad-name, type: STRING}}]\n"),
                "bad-name",
            ),
            (
                "a.yaml",
                SOFTWARE.replace(
                    "versions: [",
                    "versionsScript: {language: SHELL, body: x}\nversions: [",
                ),
                "needs the installScript",
            ),
        ];
        for (file, text, word) in cases {
            let dir = tempfile::tempdir().unwrap();
            write(dir.path(), file, &text);
            let data = tempfile::tempdir().unwrap();
            let store = upkeep_store::open_embedded(data.path()).unwrap();
            let result = match Library::load(dir.path()) {
                Ok(lib) => import(&store, &lib, None, chrono::Utc::now(), &ids())
                    .await
                    .map(drop),
                Err(e) => Err(e),
            };
            let e = result.expect_err(word).to_string();
            assert!(e.contains(word), "{word}: {e}");
            // Nothing was written.
            assert!(scope(&store, None).await.unwrap().software.is_empty());
        }
    }

    #[tokio::test]
    async fn a_prerequisite_cycle_in_the_library_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "a.yaml",
            &format!("{}dependsOn: [B]\n", SOFTWARE.replace("name: S", "name: A")),
        );
        write(
            dir.path(),
            "b.yaml",
            &format!("{}dependsOn: [A]\n", SOFTWARE.replace("name: S", "name: B")),
        );
        let data = tempfile::tempdir().unwrap();
        let store = upkeep_store::open_embedded(data.path()).unwrap();
        let lib = Library::load(dir.path()).unwrap();
        let e = import(&store, &lib, None, chrono::Utc::now(), &ids())
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("cycle: A → B → A"), "{e}");
    }
}
