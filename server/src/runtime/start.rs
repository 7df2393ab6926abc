//! Starting sessions: which deployments a session covers, frozen into plan items.

use crate::app::App;
use crate::domain::*;
use crate::error::{ApiError, ApiResult};
use crate::resolve;
use crate::session::*;
use crate::store::TxError;
use std::sync::Arc;

/// Everything a new session is made from (the API, schedules and onboarding all come here).
#[derive(Debug, Clone)]
pub struct StartRequest {
    pub computer: Computer,
    pub trigger: SessionTrigger,
    pub detection_only: bool,
    pub execute_at: Option<Time>,
    pub window_end: Option<Time>,
    pub deployment_ids: Option<Vec<Id>>,
    pub options: MaintenanceOptions,
    pub schedule_id: Option<Id>,
    pub created_by: String,
}

impl App {
    /// The plan items for a session: enabled deployments matching the computer, filtered by
    /// enforcement (`ONBOARDING` only in onboarding sessions, `AD_HOC` only when named), resolved
    /// per software or task, exceptions dropped, in run order.
    pub fn plan_items(
        &self,
        computer: &Computer,
        trigger: SessionTrigger,
        named: Option<&[Id]>,
    ) -> ApiResult<Vec<PlanItem>> {
        let all = self.catalogue_deployments_for(computer.tenant_id)?;
        let applicable: Vec<Deployment> = all
            .into_iter()
            .filter(|d| match named {
                Some(ids) => ids.contains(&d.id),
                None => match d.enforcement {
                    Enforcement::Required => true,
                    Enforcement::Onboarding => trigger == SessionTrigger::Onboarding,
                    Enforcement::AdHoc => false,
                },
            })
            .collect();
        let mut items = Vec::new();
        for r in resolve::resolve(computer, &applicable) {
            if r.is_exception() {
                continue;
            }
            let d = &r.winner;
            let what = match r.subject {
                Subject::Software(sid) => {
                    let Some(sw) = self.store.get::<Software>(&sid)? else {
                        continue;
                    };
                    let configuration_task = match sw.configuration_task_id {
                        Some(t) => self.store.get::<MaintenanceTask>(&t)?.map(task_snapshot),
                        None => None,
                    };
                    ItemWhat::Software {
                        software: SoftwareSnapshot {
                            id: sw.id,
                            name: sw.name,
                            detection_script: sw.detection_script,
                            versions: sw.versions,
                            uninstall_script: sw.uninstall_script,
                            configuration_task,
                        },
                        desired: d
                            .desired_state
                            .unwrap_or(DesiredSoftwareState::InstalledLatest),
                        version: d.version.clone(),
                    }
                }
                Subject::Task(tid) => {
                    let Some(t) = self.store.get::<MaintenanceTask>(&tid)? else {
                        continue;
                    };
                    ItemWhat::Task {
                        task: task_snapshot(t),
                        mode: d.task_mode,
                    }
                }
            };
            items.push(PlanItem {
                deployment_id: d.id,
                order: d.order,
                position: d.position,
                enforcement: d.enforcement,
                parameters: d.parameters.clone(),
                what,
                rule: r.rule.clone(),
            });
        }
        // Onboarding deployments first, then BEGINNING by position, the unordered middle, END by
        // position; ties keep deployment creation order.
        items.sort_by_key(|i| {
            (
                i.enforcement != Enforcement::Onboarding,
                i.order,
                if i.order == DeploymentOrder::Unordered {
                    0
                } else {
                    i.position
                },
                i.deployment_id,
            )
        });
        Ok(items)
    }

    /// Creates a session and takes its first step. `CONFLICT` when the computer already has an
    /// unfinished one.
    pub async fn start_session(self: &Arc<Self>, req: StartRequest) -> ApiResult<Session> {
        let items = self.plan_items(&req.computer, req.trigger, req.deployment_ids.as_deref())?;
        let now = self.clock.now();
        let session = {
            let _g = self.runtime.create_lock.lock().await;
            if let Some(active) = self.runtime.active_session_of(req.computer.id) {
                return Err(ApiError::Conflict(format!(
                    "computer {} already has an unfinished maintenance session {active}",
                    req.computer.name
                )));
            }
            let s = Session {
                id: Id::new(),
                tenant_id: req.computer.tenant_id,
                computer_id: req.computer.id,
                schedule_id: req.schedule_id,
                status: SessionStatus::Pending,
                status_reason: None,
                trigger: req.trigger,
                detection_only: req.detection_only,
                options: req.options,
                created_by: req.created_by,
                created_at: now,
                started_at: None,
                finished_at: None,
                execute_at: req.execute_at,
                window_end: req.window_end,
                postpone_count: 0,
                reboot_required: false,
                rebooted_at: None,
                compliance: None,
                items,
                actions: vec![],
                stage: Stage::AwaitDetect,
                pending_job: None,
                wake_at: None,
                offline_since: None,
                last_sequence: 1,
                before_mail_sent: false,
                after_mail_sent: false,
                deployment_ids: req.deployment_ids,
                queued: false,
                used_tokens: vec![],
            };
            let created = SessionEvent {
                session_id: s.id,
                tenant_id: s.tenant_id,
                sequence: 1,
                at: now,
                status: SessionStatus::Pending,
                action_id: None,
                action_status: None,
                log_line: Some(format!(
                    "Session created ({:?}) by {} for {} with {} deployment(s)",
                    s.trigger,
                    s.created_by,
                    req.computer.name,
                    s.items.len()
                )),
            };
            let deliveries = self.webhook_created(&s)?;
            self.store.write(|tx| {
                tx.put(&s)?;
                tx.put(&created)?;
                for d in &deliveries {
                    tx.put(d)?;
                }
                Ok::<_, TxError<ApiError>>(())
            })?;
            self.runtime.note(&s);
            let _ = self.events.send(Arc::new(created));
            if !deliveries.is_empty() {
                self.webhook_wakeup.notify_one();
            }
            s
        };
        let id = session.id;
        match self.apply(id, crate::engine::Event::Tick).await {
            Ok(s) => Ok(s),
            Err(e) => {
                tracing::warn!(session = %id, error = %e, "first step failed");
                Ok(session)
            }
        }
    }
}

fn task_snapshot(t: MaintenanceTask) -> TaskSnapshot {
    TaskSnapshot {
        id: t.id,
        name: t.name,
        test_script: t.test_script,
        set_script: t.set_script,
    }
}
