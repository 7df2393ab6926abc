//! Impact previews (`previewDeploymentChange`): reads what a preview needs — the catalogue the
//! deployments name, the computers the change may reach and their last detections of the
//! software and tasks it touches — and asks `upkeep_core::impact` what the change would do.
//! Writes nothing.

use crate::auth::TenantScope;
use crate::error::{ApiError, ApiResult};
use crate::services::App;
use futures_util::TryStreamExt;
use std::collections::HashMap;
use upkeep_core::domain::*;
use upkeep_core::impact::{
    Catalogue, Change, ComputerImpact, Detection, Outcome, Preview, StaleComputer,
};
use upkeep_store::IndexKey;
use upkeep_store::records::*;

/// What a change would do, over every computer the caller sees.
pub struct Impact {
    /// Computers with planned actions, by tenant then name.
    pub planned: Vec<ComputerImpact>,
    /// Computers whose data is missing or too old, by tenant then name.
    pub stale: Vec<StaleComputer>,
    /// The computers named above, and their tenants.
    pub computers: HashMap<Id, Computer>,
    pub tenants: HashMap<Id, Tenant>,
}

impl App {
    /// Previews `change` of a deployment of `tenant` (`None`: a cross-tenant one) over the
    /// computers in `scope`, planning from detections at most `stale_after_days` old.
    pub async fn preview_change(
        &self,
        change: &Change,
        tenant: Option<Id>,
        scope: TenantScope,
        stale_after_days: u32,
    ) -> ApiResult<Impact> {
        let _turn = self.previews.acquire().await?;
        let deployments = match tenant {
            Some(t) => self.catalogue_deployments_for(t).await?,
            None => self.store.scan::<Deployment>(None).try_collect().await?,
        };
        let mut named: Vec<&Deployment> = deployments.iter().collect();
        if let Change::Create(d) | Change::Update(d) = change {
            named.push(d);
        }
        let mut catalogue = self.preview_catalogue(&named).await?;
        let tenants: Vec<Tenant> = match tenant {
            Some(t) => self.store.get::<Tenant>(&t).await?.into_iter().collect(),
            None => self.store.scan::<Tenant>(None).try_collect().await?,
        };
        let tenants: Vec<Tenant> = tenants
            .into_iter()
            .filter(|t| scope.contains(Some(t.id)) && !t.excluded_from_maintenance)
            .collect();
        for t in &tenants {
            for sw in catalogue.software.values() {
                if sw.versions_script.is_some()
                    && let Some(v) = self
                        .store
                        .get_by_key::<upkeep_core::versions::VersionsCache>(&versions_key(
                            t.id, sw.id,
                        ))
                        .await?
                {
                    catalogue.versions.insert((t.id, sw.id), v);
                }
            }
        }
        let preview = Preview::new(
            change,
            &deployments,
            catalogue,
            self.clock.now(),
            stale_after_days,
        )
        .map_err(|e| ApiError::bad("input", e.to_string()))?;
        let mut out = Impact {
            planned: Vec::new(),
            stale: Vec::new(),
            computers: HashMap::new(),
            tenants: HashMap::new(),
        };
        for t in tenants {
            self.preview_tenant(&preview, t.id, &mut out).await?;
            out.tenants.insert(t.id, t);
        }
        let name = |id: &Id| {
            out.computers
                .get(id)
                .map(|c| c.name.to_lowercase())
                .unwrap_or_default()
        };
        out.planned
            .sort_by_cached_key(|c| (c.tenant_id, name(&c.computer_id), c.computer_id));
        out.stale
            .sort_by_cached_key(|c| (c.tenant_id, name(&c.computer_id), c.computer_id));
        Ok(out)
    }

    /// One tenant's computers: those the change may reach, with their detections of the
    /// preview's subjects (one range read per subject).
    async fn preview_tenant(
        &self,
        preview: &Preview,
        tenant: Id,
        out: &mut Impact,
    ) -> ApiResult<()> {
        let computers: Vec<Computer> = self
            .store
            .by_index::<Computer>(&IndexKey::new(TENANT_COMPUTERS, tenant.as_bytes()), None)
            .try_filter(|c| {
                std::future::ready(!c.excluded_from_maintenance && preview.may_reach(c))
            })
            .try_collect()
            .await?;
        if computers.is_empty() {
            return Ok(());
        }
        let mut found: HashMap<(Subject, Id), Detection> = HashMap::new();
        for subject in preview.subjects() {
            let prefix = detection_key(*subject, Some(tenant), None);
            let mut s = std::pin::pin!(self.store.scan_prefix::<Detection>(&prefix, None));
            while let Some(d) = s.try_next().await? {
                found.insert((d.subject, d.computer_id), d);
            }
        }
        for c in computers {
            let outcome = preview.computer(
                &c,
                |s| found.get(&(s, c.id)),
                |item| {
                    self.secrets
                        .open_parameters(&item.parameters)
                        .err()
                        .map(|e| e.to_string())
                },
            );
            match outcome {
                Outcome::Unaffected => continue,
                Outcome::Planned(p) => out.planned.push(p),
                Outcome::Stale(s) => out.stale.push(s),
            }
            out.computers.insert(c.id, c);
        }
        Ok(())
    }

    /// Snapshots of the software and tasks `deployments` name, with their prerequisites, as a
    /// session start reads them.
    async fn preview_catalogue(&self, deployments: &[&Deployment]) -> ApiResult<Catalogue> {
        let mut software = HashMap::new();
        let mut tasks = HashMap::new();
        for d in deployments {
            if let Some(sid) = d.software_id
                && !software.contains_key(&sid)
            {
                let snapshot = match self.store.get::<Software>(&sid).await? {
                    Some(sw) => Some(self.software_snapshot(sw).await?),
                    None => None,
                };
                software.insert(sid, snapshot);
            }
            if let Some(tid) = d.maintenance_task_id
                && !tasks.contains_key(&tid)
            {
                let task = self.store.get::<MaintenanceTask>(&tid).await?;
                tasks.insert(tid, task.map(super::runtime::task_snapshot));
            }
        }
        self.load_prerequisites(&mut software).await?;
        Ok(Catalogue {
            software: software
                .into_iter()
                .filter_map(|(k, v)| Some((k, v?)))
                .collect(),
            tasks: tasks
                .into_iter()
                .filter_map(|(k, v)| Some((k, v?)))
                .collect(),
            versions: HashMap::new(),
        })
    }
}
