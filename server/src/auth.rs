//! Authentication and authorisation: password hashes, API tokens, API keys, throttling, and the
//! one place tenant isolation is decided ([`Actor::sees`]).

use crate::domain::{Id, Time, User, UserRole};
use crate::error::ApiError;
use crate::permissions::{self, Action};
use argon2::Argon2;
use argon2::password_hash::{
    PasswordHash, PasswordHasher, PasswordVerifier, SaltString, rand_core::OsRng,
};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a login token is valid.
pub const API_TOKEN_HOURS: i64 = 12;
const API_AUDIENCE: &str = "upkeep-api";
pub const POSTPONE_AUDIENCE: &str = "upkeep-postpone";

pub fn hash_password(password: &str) -> Result<String, ApiError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| ApiError::Internal(format!("hashing password: {e}")))
}

pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// Runs the hash once on a dummy so that unknown e-mails take as long as wrong passwords.
pub fn burn_password_time(password: &str) {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let h = DUMMY.get_or_init(|| hash_password("not-a-real-password").unwrap_or_default());
    let _ = verify_password(password, h);
}

/// SHA-256 hex digest: how secrets (agent tokens, enrollment and API keys) are stored. They are
/// 256-bit random, so a fast hash is enough; a lookup by hash cannot leak timing about the
/// secret.
pub fn secret_hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// A fresh random secret: `prefix` + 43 base64url characters (256 bits).
pub fn new_secret(prefix: &str) -> String {
    use base64::Engine;
    let bytes: [u8; 32] = rand::random();
    format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiClaims {
    pub sub: String,
    pub role: UserRole,
    pub tenant: Option<String>,
    pub email: String,
    pub exp: i64,
    pub iat: i64,
    pub aud: String,
    /// The user's `token_generation` when the token was issued (absent in tokens from before
    /// generations existed: 0).
    #[serde(default)]
    pub generation: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PostponeClaims {
    /// Session id.
    pub sid: String,
    /// Recipient e-mail.
    pub rcpt: String,
    /// Unique token id (used once).
    pub jti: String,
    pub exp: i64,
    pub aud: String,
}

#[derive(Clone)]
pub struct Keys {
    enc: EncodingKey,
    dec: DecodingKey,
}

impl Keys {
    pub fn new(secret: &[u8]) -> Keys {
        Keys {
            enc: EncodingKey::from_secret(secret),
            dec: DecodingKey::from_secret(secret),
        }
    }

    /// A login token for `user`, valid until its generation changes or it expires.
    pub fn issue_api_token(&self, user: &User, now: Time) -> Result<String, ApiError> {
        let claims = ApiClaims {
            sub: user.id.to_string(),
            role: user.role,
            tenant: user.tenant_id.map(|t| t.to_string()),
            email: user.email.clone(),
            iat: now.timestamp(),
            exp: (now + chrono::Duration::hours(API_TOKEN_HOURS)).timestamp(),
            aud: API_AUDIENCE.into(),
            generation: user.token_generation,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.enc)
            .map_err(|e| ApiError::Internal(format!("signing token: {e}")))
    }

    pub fn verify_api_token(&self, token: &str, now: Time) -> Result<ApiClaims, ApiError> {
        let claims: ApiClaims = self.verify(token, API_AUDIENCE)?;
        if claims.exp <= now.timestamp() {
            return Err(ApiError::Unauthenticated(
                "the token has expired; log in again".into(),
            ));
        }
        Ok(claims)
    }

    pub fn issue_postpone_token(&self, claims: &PostponeClaims) -> Result<String, ApiError> {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.enc)
            .map_err(|e| ApiError::Internal(format!("signing token: {e}")))
    }

    /// Checks the signature only; expiry is checked by the caller against the server clock, so
    /// an expired link can still say *which* session it was for.
    pub fn verify_postpone_token(&self, token: &str) -> Result<PostponeClaims, ApiError> {
        self.verify(token, POSTPONE_AUDIENCE)
    }

    fn verify<T: serde::de::DeserializeOwned>(
        &self,
        token: &str,
        aud: &str,
    ) -> Result<T, ApiError> {
        let mut v = Validation::new(Algorithm::HS256);
        v.set_audience(&[aud]);
        // Expiry is compared with the server's clock by the callers (tests move that clock).
        v.validate_exp = false;
        v.required_spec_claims.clear();
        v.algorithms = vec![Algorithm::HS256];
        jsonwebtoken::decode::<T>(token, &self.dec, &v)
            .map(|d| d.claims)
            .map_err(|_| ApiError::Unauthenticated("the token is invalid".into()))
    }
}

/// Who is calling, as established from a token or API key.
#[derive(Debug, Clone)]
pub struct Actor {
    pub principal: Principal,
    pub role: UserRole,
    pub tenant_id: Option<Id>,
    /// The user must enroll TOTP before doing anything but that (`--require-mfa-for-msp-roles`);
    /// enforced once, in `graphql::ctx::Ctx::new`.
    pub mfa_pending: bool,
}

#[derive(Debug, Clone)]
pub enum Principal {
    User {
        id: Id,
        email: String,
    },
    ApiKey {
        id: Id,
        name: String,
        created_by: Id,
    },
}

impl Actor {
    /// A name for logs and `statusReason`s ("cancelled by tech@msp.example").
    pub fn display(&self) -> String {
        match &self.principal {
            Principal::User { email, .. } => email.clone(),
            Principal::ApiKey { name, .. } => format!("API key {name}"),
        }
    }

    /// The user who stands behind this actor (for API keys: their creator).
    pub fn user_id(&self) -> Id {
        match &self.principal {
            Principal::User { id, .. } => *id,
            Principal::ApiKey { created_by, .. } => *created_by,
        }
    }

    /// Tenant isolation, decided here and only here: may this actor see a record that belongs
    /// to `tenant` (`None`: a cross-tenant record)? A record it may not see must be answered
    /// exactly like one that does not exist.
    pub fn sees(&self, tenant: Option<Id>) -> bool {
        if self.role.is_msp() {
            return true;
        }
        match tenant {
            Some(t) => self.tenant_id == Some(t),
            None => false,
        }
    }

    /// Like [`sees`](Self::sees), but cross-tenant catalogue entries (software, tasks) are
    /// readable by everyone: tenant users need to know what is deployed to them.
    pub fn sees_catalogue(&self, tenant: Option<Id>) -> bool {
        tenant.is_none() || self.sees(tenant)
    }

    /// The tenant a list is limited to: tenant roles always see their own, whatever they ask.
    pub fn list_scope(&self, asked: Option<Id>) -> Result<Option<Id>, ApiError> {
        if self.role.is_msp() {
            return Ok(asked);
        }
        match (asked, self.tenant_id) {
            (Some(a), Some(own)) if a != own => Ok(Some(Id(uuid::Uuid::nil()))),
            (_, own) => Ok(own),
        }
    }

    /// May this actor do `action` at all (its scope is decided by what it can see)? The one
    /// question answered by the permission matrix ([`permissions::permits`]).
    pub fn require_role(&self, action: Action) -> Result<(), ApiError> {
        if permissions::permits(self.role, action) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "your role ({}) may not {}",
                self.role.as_str(),
                action.describe()
            )))
        }
    }

    /// May this actor do `action` to something of `tenant` (`None`: cross-tenant)? Tenant
    /// roles act only in their own tenant and never on cross-tenant items.
    pub fn require(&self, action: Action, tenant: Option<Id>) -> Result<(), ApiError> {
        self.require_role(action)?;
        if !self.role.is_msp() && (tenant.is_none() || tenant != self.tenant_id) {
            return Err(ApiError::Forbidden(match tenant {
                None => format!("only MSP roles may {} across tenants", action.describe()),
                Some(_) => format!("you may {} only in your own tenant", action.describe()),
            }));
        }
        Ok(())
    }

    /// May this actor hand on a credential (an API key, a user) with `role` in `tenant`? Only
    /// within its own rights and scope ([`permissions::within`]).
    pub fn require_delegation(&self, role: UserRole, tenant: Option<Id>) -> Result<(), ApiError> {
        let scope_ok = self.role.is_msp() || (tenant.is_some() && tenant == self.tenant_id);
        if !scope_ok || !permissions::within(role, self.role) {
            return Err(ApiError::Forbidden(format!(
                "{} may do what your role ({}) may not: nobody hands on more rights than their own",
                role.as_str(),
                self.role.as_str()
            )));
        }
        Ok(())
    }

    /// For changes to configuration of `tenant` (`None`: the cross-tenant catalogue) through
    /// the generic loaders: people, computers, enrollment keys, software, tasks, deployments.
    pub fn require_write_in(&self, tenant: Option<Id>) -> Result<(), ApiError> {
        if !permissions::permits(self.role, Action::ManageComputers)
            && !permissions::permits(self.role, Action::ManageCatalogue)
        {
            return Err(ApiError::Forbidden(format!(
                "{} is read-only",
                self.role.as_str()
            )));
        }
        if tenant.is_none() && !self.role.is_msp() {
            return Err(ApiError::Forbidden(
                "only MSP roles may change cross-tenant items".into(),
            ));
        }
        Ok(())
    }
}

/// Counts failures per key in a sliding window; refuses once a key has too many.
pub struct Throttle {
    limit: u32,
    window: Duration,
    state: Mutex<HashMap<String, (u32, Instant)>>,
}

impl Throttle {
    pub fn new(limit: u32, window: Duration) -> Throttle {
        Throttle {
            limit,
            window,
            state: Mutex::new(HashMap::new()),
        }
    }

    /// `Err(seconds to wait)` when the key is throttled.
    pub fn check(&self, key: &str) -> Result<(), u64> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match state.get(key) {
            Some((n, since)) if *n >= self.limit && since.elapsed() < self.window => {
                Err((self.window - since.elapsed()).as_secs().max(1))
            }
            _ => Ok(()),
        }
    }

    pub fn fail(&self, key: &str) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.len() > 100_000 {
            let window = self.window;
            state.retain(|_, (_, since)| since.elapsed() < window);
        }
        let e = state.entry(key.to_string()).or_insert((0, Instant::now()));
        if e.1.elapsed() >= self.window {
            *e = (0, Instant::now());
        }
        e.0 += 1;
    }

    pub fn succeed(&self, key: &str) {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
}

pub fn ip_key(ip: Option<IpAddr>) -> String {
    ip.map(|i| format!("ip:{i}"))
        .unwrap_or_else(|| "ip:unknown".into())
}
