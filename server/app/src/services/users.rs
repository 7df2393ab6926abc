//! Users and API keys: creating, changing and deleting users (keeping at least one enabled
//! MSP_ADMIN), and resolving an API key to an actor.

use crate::auth::{Actor, Principal, secret_hash};
use crate::clock::Clock;
use crate::error::{ApiError, ApiResult};
use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::Mutex;
use upkeep_core::domain::*;
use upkeep_store::records::*;
use upkeep_store::{Db, IndexKey, TxError};

/// API keys seen recently, so a request needs no index lookup and `lastUsedAt` is written at
/// most once a minute per key. (The key's creator is still read per request: a point read.)
#[derive(Default)]
pub struct ApiKeyCache {
    inner: Mutex<HashMap<String, (ApiKey, std::time::Instant, bool)>>,
}

/// The accounts service: users (keeping at least one enabled MSP_ADMIN) and API keys, with
/// the cache of recently used keys. It owns its store handle and clock.
pub struct Accounts {
    store: Db,
    clock: Clock,
    api_keys: ApiKeyCache,
}

impl Accounts {
    pub fn new(store: Db, clock: Clock) -> Accounts {
        Accounts {
            store,
            clock,
            api_keys: ApiKeyCache::default(),
        }
    }

    /// Creates a user; `CONFLICT` when the e-mail is taken.
    pub async fn create_user(&self, user: User) -> ApiResult<User> {
        let idx = IndexKey::new(USER_EMAIL, user.email.text());
        self.store
            .write(|tx| {
                if !tx.claim_unique(&idx, user.id.as_bytes())? {
                    return Err(TxError::Abort(ApiError::Conflict(format!(
                        "a user with e-mail {} exists",
                        user.email.text()
                    ))));
                }
                tx.put(&user)?;
                Ok(())
            })
            .await?;
        self.store.flush().await?;
        Ok(user)
    }

    /// Changes a user in one transaction: `f` checks and edits the current record (it may run
    /// more than once). When the change touches the user's access (role, tenant, disabled,
    /// password) their token generation moves on, which ends every token issued before.
    /// `CONFLICT` when the change would leave no enabled MSP_ADMIN.
    pub async fn change_user(
        &self,
        id: Id,
        f: impl Fn(&mut User) -> ApiResult<()> + Sync,
    ) -> ApiResult<User> {
        let others = self.other_msp_admins(id).await?;
        let user = self
            .store
            .write(|tx| {
                let old: User = tx
                    .get(&id)?
                    .ok_or_else(|| TxError::Abort(ApiError::not_found("user", id)))?;
                let mut new = old.clone();
                f(&mut new).map_err(TxError::Abort)?;
                let access_changed = new.role != old.role
                    || new.tenant_id != old.tenant_id
                    || new.disabled != old.disabled
                    || new.password_hash != old.password_hash;
                if access_changed {
                    new.token_generation = old.token_generation.wrapping_add(1);
                }
                if is_active_msp_admin(&old) && !is_active_msp_admin(&new) {
                    require_another_msp_admin(tx, &old, &others)?;
                }
                tx.put(&new)?;
                Ok(new)
            })
            .await?;
        self.store.flush().await?;
        Ok(user)
    }

    /// Deletes a user once `check` accepts the current record, and frees their e-mail in the
    /// same transaction. Their tokens and API keys stop working at once (see
    /// `graphql::authenticate` and [`authenticate_api_key`](Self::authenticate_api_key)).
    pub async fn delete_user(
        &self,
        id: Id,
        check: impl Fn(&User) -> ApiResult<()> + Sync,
    ) -> ApiResult<()> {
        let others = self.other_msp_admins(id).await?;
        self.store
            .write(|tx| {
                let user: User = tx
                    .get(&id)?
                    .ok_or_else(|| TxError::Abort(ApiError::not_found("user", id)))?;
                check(&user).map_err(TxError::Abort)?;
                if is_active_msp_admin(&user) {
                    require_another_msp_admin(tx, &user, &others)?;
                }
                tx.delete::<User, ApiError>(id.as_bytes())?;
                let email = IndexKey::new(USER_EMAIL, user.email.text());
                if tx.index_has(&email)?.as_deref() == Some(id.as_bytes().as_slice()) {
                    tx.release_unique(&email)?;
                }
                Ok(())
            })
            .await?;
        self.store.flush().await?;
        Ok(())
    }

    /// The second factor of a login (for a user with TOTP on): the code must match the current
    /// step ±1 and be later than the last one used, which it then becomes. Errors are
    /// [`ApiError::MfaRequired`].
    pub async fn use_totp_code(&self, id: Id, code: Option<&str>) -> ApiResult<()> {
        let Some(code) = code.filter(|c| !c.trim().is_empty()) else {
            return Err(ApiError::MfaRequired(
                "this account uses a second factor: give totpCode from your authenticator app"
                    .into(),
            ));
        };
        let now = self.clock.now();
        self.change_user(id, |u| {
            // Turned off meanwhile: nothing to check.
            let Some(secret) = u.totp.secret.as_deref() else {
                return Ok(());
            };
            let step =
                crate::totp::verify(secret, code, now, u.totp.last_step).ok_or_else(|| {
                    ApiError::MfaRequired("the TOTP code is wrong or was already used".into())
                })?;
            u.totp.last_step = Some(step);
            Ok(())
        })
        .await
        .map(|_| ())
    }

    /// Ids of the enabled MSP admins other than `except`, read before a transaction that
    /// re-checks them (transactions run one at a time, and an admin created meanwhile only
    /// makes the check stricter than needed).
    async fn other_msp_admins(&self, except: Id) -> ApiResult<Vec<Id>> {
        let mut ids = Vec::new();
        let mut users = std::pin::pin!(
            self.store
                .by_index::<User>(&IndexKey::new(TENANT_USERS, tenant_key(None)), None)
        );
        while let Some(u) = users.next().await {
            let u = u?;
            if u.id != except && is_active_msp_admin(&u) {
                ids.push(u.id);
            }
        }
        Ok(ids)
    }

    /// Resolves `upk_…` to its key's actor: revoked or expired keys are refused at once.
    pub async fn authenticate_api_key(&self, secret: &str) -> ApiResult<Actor> {
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
                    .unique(&IndexKey::new(API_KEY_HASH, &hash))
                    .await?
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
        // A key acts for its creator: it ends when they are deleted or disabled, and it holds
        // no more than they may hand on now (a demoted creator's keys stop).
        match self.store.get::<User>(&key.created_by).await? {
            Some(u) if !u.disabled => {
                let in_scope =
                    crate::auth::TenantScope::of(u.role, u.tenant_id).contains(key.tenant_id);
                if !in_scope || !crate::permissions::within(key.role, u.role) {
                    return Err(ApiError::Unauthenticated(
                        "the API key holds more rights than its creator has now".into(),
                    ));
                }
            }
            Some(_) => {
                return Err(ApiError::Unauthenticated(
                    "the API key's creator is disabled".into(),
                ));
            }
            None => {
                return Err(ApiError::Unauthenticated(
                    "the API key's creator no longer exists".into(),
                ));
            }
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
            mfa_pending: false,
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
    pub async fn write_api_key_usage(&self) {
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
        if r.await.is_err() {
            tracing::warn!("could not write API key usage");
        }
    }
}

fn is_active_msp_admin(u: &User) -> bool {
    u.role == UserRole::MspAdmin && !u.disabled
}

/// Inside a transaction: some other enabled MSP_ADMIN among `others` still exists.
fn require_another_msp_admin(
    tx: &upkeep_store::Tx<'_>,
    user: &User,
    others: &[Id],
) -> Result<(), TxError<ApiError>> {
    for id in others {
        if tx
            .get::<User, ApiError>(id)?
            .is_some_and(|u| is_active_msp_admin(&u))
        {
            return Ok(());
        }
    }
    Err(TxError::Abort(ApiError::Conflict(format!(
        "{} is the last enabled MSP_ADMIN; make another user MSP_ADMIN first",
        user.email.text()
    ))))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Users stored before accounts could be disabled or have a second factor read as enabled,
    /// generation 0 (so their existing tokens stay good), without TOTP.
    #[test]
    fn users_written_before_the_security_fields_still_load() {
        let old = r#"{"id":"01900000-0000-7000-8000-000000000001","email":"a@msp.example",
            "password_hash":"$argon2id$x","role":"MSP_ADMIN","tenant_id":null,
            "created_at":"2025-01-01T00:00:00Z"}"#;
        let u: User = serde_json::from_str(old).expect("old user record");
        assert!(!u.disabled);
        assert_eq!(u.token_generation, 0);
        assert!(!u.totp_on() && u.totp.pending.is_none() && u.totp.last_step.is_none());
        // And tokens issued before generations existed carry none: 0.
        let claims: crate::auth::ApiClaims = serde_json::from_str(
            r#"{"sub":"x","role":"MSP_ADMIN","tenant":null,"email":"a@msp.example",
                "exp":2,"iat":1,"aud":"upkeep-api"}"#,
        )
        .expect("old claims");
        assert_eq!(claims.generation, 0);
    }
}
