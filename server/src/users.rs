//! Users and API keys: creating them, and resolving an API key to an actor.

use crate::app::App;
use crate::auth::{Actor, Principal, secret_hash};
use crate::domain::*;
use crate::error::{ApiError, ApiResult};
use crate::store::records::*;
use crate::store::{IndexKey, TxError};
use std::collections::HashMap;
use std::sync::Mutex;

/// API keys seen recently, so a request needs no store read and `lastUsedAt` is written at
/// most once a minute per key.
#[derive(Default)]
pub struct ApiKeyCache {
    inner: Mutex<HashMap<String, (ApiKey, std::time::Instant, bool)>>,
}

impl App {
    /// Creates a user; `CONFLICT` when the e-mail is taken.
    pub async fn create_user(&self, user: User) -> ApiResult<User> {
        let idx = IndexKey::new(USER_EMAIL, &user.email);
        self.store.write(|tx| {
            if !tx.claim_unique(&idx, user.id.as_bytes())? {
                return Err(TxError::Abort(ApiError::Conflict(format!(
                    "a user with e-mail {} exists",
                    user.email
                ))));
            }
            tx.put(&user)?;
            Ok(())
        })?;
        self.store.flush().await?;
        Ok(user)
    }

    /// Resolves `upk_…` to its key's actor: revoked or expired keys are refused at once.
    pub fn authenticate_api_key(&self, secret: &str) -> ApiResult<Actor> {
        let hash = secret_hash(secret);
        let now = self.clock.now();
        let cached = self
            .api_keys
            .inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&hash)
            .map(|c| c.0.clone());
        let key = match cached {
            Some(k) => k,
            None => {
                let k: ApiKey = self
                    .store
                    .unique(&IndexKey::new(API_KEY_HASH, &hash))?
                    .ok_or_else(|| ApiError::Unauthenticated("unknown API key".into()))?;
                self.api_keys
                    .inner
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(hash.clone(), (k.clone(), std::time::Instant::now(), false));
                k
            }
        };
        if key.revoked {
            return Err(ApiError::Unauthenticated("the API key was revoked".into()));
        }
        if key.expires_at.is_some_and(|e| e <= now) {
            return Err(ApiError::Unauthenticated("the API key has expired".into()));
        }
        {
            let mut m = self
                .api_keys
                .inner
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if let Some(e) = m.get_mut(&hash) {
                e.0.last_used_at = Some(now);
                e.2 = true;
            }
        }
        Ok(Actor {
            principal: Principal::ApiKey {
                id: key.id,
                name: key.name.clone(),
                created_by: key.created_by,
            },
            role: key.role,
            tenant_id: key.tenant_id,
        })
    }

    pub fn api_key_last_used(&self, k: &ApiKey) -> Option<Time> {
        self.api_keys
            .inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&k.secret_hash)
            .and_then(|e| e.0.last_used_at)
    }

    pub fn forget_api_key(&self, hash: &str) {
        self.api_keys
            .inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(hash);
    }

    /// Writes `lastUsedAt` of keys used since the last call (a background loop calls it every
    /// minute).
    pub fn write_api_key_usage(&self) {
        let used: Vec<(Id, Time)> = {
            let mut m = self
                .api_keys
                .inner
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            m.values_mut()
                .filter(|e| e.2)
                .map(|e| {
                    e.2 = false;
                    (e.0.id, e.0.last_used_at.unwrap_or_default())
                })
                .collect()
        };
        if used.is_empty() {
            return;
        }
        let r = self.store.write(|tx| {
            for (id, t) in &used {
                if let Some(mut k) = tx.get::<ApiKey, ()>(id)? {
                    k.last_used_at = Some(*t);
                    tx.put(&k)?;
                }
            }
            Ok(())
        });
        if r.is_err() {
            tracing::warn!("could not write API key usage");
        }
    }
}
