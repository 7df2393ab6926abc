//! Authentication and authorisation: password hashes, API tokens, API keys, throttling, and the
//! one place tenant isolation is decided ([`TenantScope`], derived from the [`Actor`]).

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
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use upkeep_core::domain::{Id, Time, User, UserRole};

/// How long a login token is valid.
pub const API_TOKEN_HOURS: i64 = 12;
/// How long a sign-in lasts through `refreshToken`: a chain of refreshed tokens ends this
/// long after the password (and second factor) were last given.
pub const SIGN_IN_DAYS: i64 = 30;
const API_AUDIENCE: &str = "upkeep-api";
pub const POSTPONE_AUDIENCE: &str = "upkeep-postpone";

/// How many argon2 runs may go at once. Each takes ~19 MiB and a core for tens of
/// milliseconds; without a bound a login flood would fill tokio's blocking pool (512 threads)
/// and the memory with them. Waiting callers queue here, not in the blocking pool.
fn argon2_permits() -> &'static tokio::sync::Semaphore {
    static PERMITS: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    PERMITS.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        tokio::sync::Semaphore::new(2 * cores)
    })
}

/// Runs one argon2 job off the async workers, at most [`argon2_permits`] at a time.
async fn run_argon2<T: Send + 'static>(
    job: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    let _permit = argon2_permits()
        .acquire()
        .await
        .map_err(|_| ApiError::internal("password hashing is shut down"))?;
    tokio::task::spawn_blocking(job)
        .await
        .map_err(|e| ApiError::internal(format_args!("password hashing: {e}")))
}

/// Hashes a password (argon2id) off the async workers.
pub async fn hash_password(password: &str) -> Result<String, ApiError> {
    let password = password.to_owned();
    run_argon2(move || hash_password_blocking(&password)).await?
}

/// Blocks the calling thread for the whole hash: for tools and fixtures, never on an async
/// worker (use [`hash_password`]).
pub fn hash_password_blocking(password: &str) -> Result<String, ApiError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| ApiError::internal(format_args!("hashing password: {e}")))
}

/// Checks a password against its stored hash off the async workers. A hash that does not
/// parse, or a failure to run the check, counts as a wrong password.
pub async fn verify_password(password: &str, hash: &str) -> bool {
    let (password, hash) = (password.to_owned(), hash.to_owned());
    run_argon2(move || verify_blocking(&password, &hash))
        .await
        .unwrap_or(false)
}

fn verify_blocking(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// Runs the hash once on a dummy so that unknown e-mails take as long as wrong passwords.
pub async fn burn_password_time(password: &str) {
    static DUMMY: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();
    let h = DUMMY
        .get_or_init(|| async {
            hash_password("not-a-real-password")
                .await
                .unwrap_or_default()
        })
        .await;
    let _ = verify_password(password, h).await;
}

/// SHA-256 hex digest: how secrets (agent tokens, enrollment and API keys) are stored. They are
/// 256-bit random, so a fast hash is enough; a lookup by hash cannot leak timing about the
/// secret.
pub fn secret_hash(secret: &str) -> String {
    hex::encode(secret_digest(secret))
}

/// The SHA-256 of a secret as raw bytes: what in-memory tables key by (32 bytes, not the 64
/// of the hex form the store keeps).
pub fn secret_digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
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
    /// When the user last gave their password (unix seconds); a refreshed token keeps it.
    /// Absent in tokens from before refreshing existed: `iat` stands in.
    #[serde(default)]
    pub auth_time: i64,
}

impl ApiClaims {
    /// When the sign-in this token belongs to happened.
    pub fn signed_in_at(&self) -> i64 {
        if self.auth_time > 0 {
            self.auth_time
        } else {
            self.iat
        }
    }
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
    /// The session's `postponeCount` when the link was mailed: a postpone sends a fresh mail,
    /// and the earlier mail's links stop working (absent in links from before: not checked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u32>,
    /// What the link may do: absent, the postpone page (postpone or update now);
    /// [`LINK_UPDATE_NOW`], update now only (mailed when postponing is not offered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<String>,
}

/// `PostponeClaims::act` of a link that only starts the maintenance now.
pub const LINK_UPDATE_NOW: &str = "update-now";

/// `PostponeClaims::act` of an after-mail's "Reboot now" link: it may only reboot the computer
/// (when a reboot is still pending there), at `/reboot/{token}`.
pub const LINK_REBOOT_NOW: &str = "reboot-now";

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
        self.sign_api_token(user, now, now.timestamp())
    }

    /// A fresh token for a still-valid one of the same sign-in (`signed_in_at`, unix seconds):
    /// refused once the sign-in is [`SIGN_IN_DAYS`] old, so a stolen token cannot be kept
    /// alive forever. The old token keeps its own expiry.
    pub fn refresh_api_token(
        &self,
        user: &User,
        signed_in_at: i64,
        now: Time,
    ) -> Result<String, ApiError> {
        if now.timestamp() - signed_in_at > SIGN_IN_DAYS * 86_400 {
            return Err(ApiError::Unauthenticated(format!(
                "this sign-in is older than {SIGN_IN_DAYS} days; log in again"
            )));
        }
        self.sign_api_token(user, now, signed_in_at)
    }

    fn sign_api_token(&self, user: &User, now: Time, auth_time: i64) -> Result<String, ApiError> {
        let claims = ApiClaims {
            sub: user.id.to_string(),
            role: user.role,
            tenant: user.tenant_id.map(|t| t.to_string()),
            email: user.email.text().to_string(),
            iat: now.timestamp(),
            exp: (now + chrono::Duration::hours(API_TOKEN_HOURS)).timestamp(),
            aud: API_AUDIENCE.into(),
            generation: user.token_generation,
            auth_time,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.enc)
            .map_err(|e| ApiError::internal(format_args!("signing token: {e}")))
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
            .map_err(|e| ApiError::internal(format_args!("signing token: {e}")))
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
        /// When this sign-in began (unix seconds): `refreshToken` keeps it.
        signed_in_at: i64,
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

    /// Which tenants this actor sees: derived once from its role and tenant, and what every
    /// tenant check asks ([`TenantScope`]).
    pub fn scope(&self) -> TenantScope {
        TenantScope::of(self.role, self.tenant_id)
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
        if !self.scope().contains(tenant) {
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
        if !self.scope().contains(tenant) || !permissions::within(role, self.role) {
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
        self.scope().require_write(tenant)
    }
}

/// The tenants a caller may see, decided once from its credential ([`Actor::scope`]) and
/// passed to whatever reads or filters by tenant: tenant isolation is this type's methods and
/// nothing else. A record it does not [`contain`](Self::contains) must be answered exactly like
/// one that does not exist.
///
/// Also the answer to "which tenants does this list cover" ([`narrow`](Self::narrow)): a
/// list asked for another tenant than the caller's own covers [`Nothing`](Self::Nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TenantScope {
    /// Every tenant and the cross-tenant records: MSP roles.
    All,
    /// One tenant's records: tenant roles.
    Tenant(Id),
    /// No tenant's records (a tenant role without a tenant; a list narrowed to a tenant the
    /// caller does not see).
    Nothing,
}

impl TenantScope {
    pub fn of(role: UserRole, tenant: Option<Id>) -> TenantScope {
        if role.is_msp() {
            return TenantScope::All;
        }
        tenant.map_or(TenantScope::Nothing, TenantScope::Tenant)
    }

    /// May a record of `owner` (`None`: cross-tenant) be seen or acted on? Only `All` holds
    /// cross-tenant records.
    pub fn contains(self, owner: Option<Id>) -> bool {
        match self {
            TenantScope::All => true,
            TenantScope::Tenant(t) => owner == Some(t),
            TenantScope::Nothing => false,
        }
    }

    /// Like [`contains`](Self::contains), but cross-tenant catalogue entries (software, tasks)
    /// are readable in every scope: tenant users need to know what is deployed to them.
    pub fn catalogue_contains(self, owner: Option<Id>) -> bool {
        owner.is_none() || self.contains(owner)
    }

    /// The tenants a list covers when the caller asks for `asked` (`None`: all it sees): tenant
    /// roles always get their own, and nothing when they ask for another tenant.
    pub fn narrow(self, asked: Option<Id>) -> TenantScope {
        match (self, asked) {
            (TenantScope::All, Some(a)) => TenantScope::Tenant(a),
            (TenantScope::Tenant(own), Some(a)) if a != own => TenantScope::Nothing,
            (scope, _) => scope,
        }
    }

    /// May a record of `owner` be changed in this scope? Cross-tenant items only by MSP roles.
    pub fn require_write(self, owner: Option<Id>) -> Result<(), ApiError> {
        match owner {
            _ if self.contains(owner) => Ok(()),
            None => Err(ApiError::Forbidden(
                "only MSP roles may change cross-tenant items".into(),
            )),
            Some(_) => Err(ApiError::Forbidden(
                "you may change only your own tenant's items".into(),
            )),
        }
    }
}

/// Counts attempts per key in a fixed window; refuses once a key has `limit` of them.
///
/// Bounded in memory by construction: it never holds more than `capacity` keys. A new key
/// when full first drops keys whose window has passed, then the oldest window still open
/// (an attacker who can fill the map from many addresses can make it forget a count; it
/// cannot make the server run out of memory).
pub struct Throttle {
    limit: u32,
    window: Duration,
    capacity: usize,
    state: Mutex<Windows>,
}

#[derive(Default)]
struct Windows {
    by_key: HashMap<Arc<str>, Window>,
    /// Every key by the start of its window, oldest first: eviction without a scan.
    by_start: std::collections::BTreeSet<(Instant, u64, Arc<str>)>,
    next_seq: u64,
}

struct Window {
    count: u32,
    start: Instant,
    seq: u64,
}

/// How many keys a throttle holds at most unless told otherwise: with 340-byte keys (the
/// longest login e-mail with its address) about 50 MB at worst, a few MB in practice.
pub const THROTTLE_CAPACITY: usize = 100_000;

impl Throttle {
    pub fn new(limit: u32, window: Duration) -> Throttle {
        Throttle::with_capacity(limit, window, THROTTLE_CAPACITY)
    }

    pub fn with_capacity(limit: u32, window: Duration, capacity: usize) -> Throttle {
        Throttle {
            limit,
            window,
            capacity: capacity.max(1),
            state: Mutex::new(Windows::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Windows> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `Err(seconds to wait)` when the key is throttled.
    pub fn check(&self, key: &str) -> Result<(), u64> {
        let now = Instant::now();
        match self.lock().by_key.get(key) {
            Some(w) if w.count >= self.limit && now < w.start + self.window => {
                Err((w.start + self.window - now).as_secs().max(1))
            }
            _ => Ok(()),
        }
    }

    /// Counts an attempt *before* it is checked, so that parallel attempts cannot all pass
    /// [`check`](Self::check) and then all fail: `Err(seconds to wait)` (and nothing counted)
    /// when the key has no attempt left. Give it back with [`refund`](Self::refund) when the
    /// attempt succeeds.
    pub fn reserve(&self, key: &str) -> Result<(), u64> {
        let now = Instant::now();
        let mut s = self.lock();
        if let Some(w) = s.by_key.get(key)
            && now < w.start + self.window
        {
            if w.count >= self.limit {
                return Err((w.start + self.window - now).as_secs().max(1));
            }
            if let Some(w) = s.by_key.get_mut(key) {
                w.count += 1;
            }
            return Ok(());
        }
        s.open(key, now, self.window, self.capacity);
        Ok(())
    }

    /// Records a failure that was not reserved.
    pub fn fail(&self, key: &str) {
        let now = Instant::now();
        let mut s = self.lock();
        match s.by_key.get_mut(key) {
            Some(w) if now < w.start + self.window => w.count = w.count.saturating_add(1),
            _ => s.open(key, now, self.window, self.capacity),
        }
    }

    /// Gives back one [`reserve`](Self::reserve)d attempt that succeeded.
    pub fn refund(&self, key: &str) {
        let mut s = self.lock();
        if let Some(w) = s.by_key.get_mut(key) {
            w.count = w.count.saturating_sub(1);
        }
    }

    /// Forgets the key's failures (a success that proves the caller is who it says).
    pub fn succeed(&self, key: &str) {
        let mut s = self.lock();
        if let Some((k, w)) = s.by_key.remove_entry(key) {
            s.by_start.remove(&(w.start, w.seq, k));
        }
    }

    /// Keys held now (tests: the bound).
    pub fn len(&self) -> usize {
        self.lock().by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Windows {
    /// Starts a new window with one attempt for `key`, replacing an expired one and making room
    /// first when full.
    fn open(&mut self, key: &str, now: Instant, window: Duration, capacity: usize) {
        if let Some((k, old)) = self.by_key.remove_entry(key) {
            self.by_start.remove(&(old.start, old.seq, k));
        }
        // Expired windows are the oldest, so both rules take from the front.
        while let Some((start, _, _)) = self.by_start.first()
            && (self.by_key.len() >= capacity || now >= *start + window)
        {
            if let Some((_, _, k)) = self.by_start.pop_first() {
                self.by_key.remove(&k);
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let key: Arc<str> = Arc::from(key);
        self.by_start.insert((now, seq, key.clone()));
        self.by_key.insert(
            key,
            Window {
                count: 1,
                start: now,
                seq,
            },
        );
    }
}

/// The failed-login limits. A lockout per address alone would lock every account behind one
/// proxy, so the tight limit is per account *and* address; a slower one per account catches
/// guessing from many addresses, and a loose one per address catches one address trying many
/// accounts without getting in the way of an office behind NAT.
pub struct LoginThrottle {
    pair: Throttle,
    account: Throttle,
    address: Throttle,
}

impl Default for LoginThrottle {
    fn default() -> Self {
        LoginThrottle {
            pair: Throttle::new(5, Duration::from_secs(5 * 60)),
            account: Throttle::new(20, Duration::from_secs(15 * 60)),
            address: Throttle::new(100, Duration::from_secs(5 * 60)),
        }
    }
}

/// A login attempt counted as failed until [`succeeded`](LoginAttempt::succeeded) says
/// otherwise: dropping it leaves the failure counted.
#[must_use = "call succeeded() when the credentials were right"]
pub struct LoginAttempt<'a> {
    limits: &'a LoginThrottle,
    pair: String,
    account: String,
    address: String,
}

impl LoginThrottle {
    /// Reserves one failure under every limit before the password is checked, so that N
    /// parallel guesses cannot all pass the check; `Err(seconds to wait)` (and nothing counted)
    /// when a limit is reached. `email` is the normalised login e-mail.
    pub fn reserve(&self, email: &str, ip: Option<IpAddr>) -> Result<LoginAttempt<'_>, u64> {
        let address = ip_key(ip);
        let attempt = LoginAttempt {
            limits: self,
            pair: format!("{address} email:{email}"),
            account: format!("email:{email}"),
            address,
        };
        let rules = [
            (&self.pair, &attempt.pair),
            (&self.account, &attempt.account),
            (&self.address, &attempt.address),
        ];
        for (i, (t, key)) in rules.iter().enumerate() {
            if let Err(wait) = t.reserve(key) {
                for (t, key) in &rules[..i] {
                    t.refund(key);
                }
                return Err(wait);
            }
        }
        Ok(attempt)
    }
}

impl LoginAttempt<'_> {
    /// The credentials were right: the account and address get their attempt back, and the
    /// pair's earlier failures are forgotten.
    pub fn succeeded(self) {
        self.limits.pair.succeed(&self.pair);
        self.limits.account.refund(&self.account);
        self.limits.address.refund(&self.address);
    }
}

pub fn ip_key(ip: Option<IpAddr>) -> String {
    ip.map(|i| format!("ip:{i}"))
        .unwrap_or_else(|| "ip:unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u128) -> Id {
        Id(uuid::Uuid::from_u128(n))
    }

    #[test]
    fn scope_follows_role_and_tenant() {
        let (a, b) = (id(1), id(2));
        assert_eq!(TenantScope::of(UserRole::MspAdmin, None), TenantScope::All);
        assert_eq!(
            TenantScope::of(UserRole::TenantAdmin, Some(a)),
            TenantScope::Tenant(a)
        );
        assert_eq!(
            TenantScope::of(UserRole::TenantAdmin, None),
            TenantScope::Nothing
        );
        let own = TenantScope::Tenant(a);
        assert!(own.contains(Some(a)) && !own.contains(Some(b)) && !own.contains(None));
        assert!(own.catalogue_contains(None) && !own.catalogue_contains(Some(b)));
        assert!(TenantScope::All.contains(None) && TenantScope::All.contains(Some(b)));
        assert!(!TenantScope::Nothing.contains(Some(a)) && !TenantScope::Nothing.contains(None));
        assert!(TenantScope::Nothing.catalogue_contains(None));
    }

    #[test]
    fn a_list_narrows_to_what_was_asked_and_never_widens() {
        let (a, b) = (id(1), id(2));
        let own = TenantScope::Tenant(a);
        assert_eq!(TenantScope::All.narrow(None), TenantScope::All);
        assert_eq!(TenantScope::All.narrow(Some(b)), TenantScope::Tenant(b));
        assert_eq!(own.narrow(None), own);
        assert_eq!(own.narrow(Some(a)), own);
        assert_eq!(own.narrow(Some(b)), TenantScope::Nothing);
        assert_eq!(TenantScope::Nothing.narrow(Some(a)), TenantScope::Nothing);
    }

    #[test]
    fn cross_tenant_items_are_written_only_in_the_all_scope() {
        let (a, b) = (id(1), id(2));
        assert!(TenantScope::All.require_write(None).is_ok());
        assert!(TenantScope::Tenant(a).require_write(Some(a)).is_ok());
        assert!(matches!(
            TenantScope::Tenant(a).require_write(None),
            Err(ApiError::Forbidden(m)) if m.contains("cross-tenant")
        ));
        assert!(matches!(
            TenantScope::Tenant(a).require_write(Some(b)),
            Err(ApiError::Forbidden(_))
        ));
    }

    #[test]
    fn throttle_never_holds_more_than_its_capacity() {
        let t = Throttle::with_capacity(3, Duration::from_secs(3600), 4);
        for i in 0..50 {
            t.fail(&format!("k{i}"));
            assert!(t.len() <= 4);
        }
        assert_eq!(t.len(), 4);
        // The oldest went first: the newest four are still counted.
        let s = t.lock();
        let mut keys: Vec<&str> = s.by_key.keys().map(|k| &**k).collect();
        keys.sort();
        assert_eq!(keys, ["k46", "k47", "k48", "k49"]);
        assert_eq!(s.by_start.len(), 4);
    }

    #[test]
    fn full_throttle_drops_expired_windows_before_open_ones() {
        let window = Duration::from_secs(60);
        let t0 = Instant::now();
        let mut s = Windows::default();
        s.open("old", t0, window, 3);
        s.open("a", t0 + Duration::from_secs(50), window, 3);
        s.open("b", t0 + Duration::from_secs(55), window, 3);
        // At 70 s "old" has expired; "a" and "b" have not and stay.
        s.open("c", t0 + Duration::from_secs(70), window, 3);
        let mut keys: Vec<&str> = s.by_key.keys().map(|k| &**k).collect();
        keys.sort();
        assert_eq!(keys, ["a", "b", "c"]);
        // Still full and nothing expired: the oldest open window ("a") makes room.
        s.open("d", t0 + Duration::from_secs(71), window, 3);
        let mut keys: Vec<&str> = s.by_key.keys().map(|k| &**k).collect();
        keys.sort();
        assert_eq!(keys, ["b", "c", "d"]);
        assert_eq!(s.by_start.len(), 3);
    }

    #[test]
    fn reserve_counts_before_the_check_and_refund_gives_it_back() {
        let t = Throttle::new(2, Duration::from_secs(60));
        assert!(t.reserve("k").is_ok());
        assert!(t.reserve("k").is_ok());
        assert!(t.reserve("k").is_err());
        assert!(t.check("k").is_err());
        t.refund("k");
        assert!(t.check("k").is_ok());
        assert!(t.reserve("k").is_ok());
        assert!(t.reserve("k").is_err());
        t.succeed("k");
        assert!(t.is_empty());
    }

    #[test]
    fn one_account_failing_does_not_lock_another_from_the_same_address() {
        let l = LoginThrottle::default();
        let ip = Some("192.0.2.1".parse().expect("literal"));
        for _ in 0..5 {
            drop(l.reserve("a@x.example", ip).expect("under the limit"));
        }
        assert!(l.reserve("a@x.example", ip).is_err());
        // Refused attempts are not counted against the address.
        for _ in 0..50 {
            assert!(l.reserve("a@x.example", ip).is_err());
        }
        l.reserve("b@x.example", ip)
            .expect("another account from the same address")
            .succeeded();
        // From another address, a's account limit is not reached yet.
        let other = Some("192.0.2.2".parse().expect("literal"));
        assert!(l.reserve("a@x.example", other).is_ok());
    }
}
