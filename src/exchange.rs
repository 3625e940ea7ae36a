//! The token exchange: Entra access token in, internal JWT and user record out.
//!
//! Owns: the order of the steps (validate the Entra token, decide group membership from the
//! claim or Graph, read the profile, sync the user record, mint the internal token) and the
//! caching of group answers (`group_ttl` / `negative_ttl`) and profiles (`profile_ttl`), and
//! of Entra tokens already verified (keyed by the token's SHA-256, until its `exp`; dropped at
//! the user's logout, and unused once continuous access changed the user's access), so that a
//! client exchanging the same token again costs no RSA verification.
//! Must not: parse HTTP or build responses (see `http::exchange`), or let any doubt through:
//! every failure is a typed [`ExchangeError`], never an empty group list.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};

use crate::cache::TieredCache;
use crate::cache::redis::RedisStore;
use crate::config::{CacheSettings, GraphMode};
use crate::directory::{Directory, DirectoryError, Profile, UserRecord};
use crate::entra::{AppIdentity, EntraError, EntraIdentity, EntraValidator, GroupsClaim, Validated};
use crate::graph::{GraphAuth, GraphClient, GraphError, GraphSession};
use crate::issuer::{Issuer, MintError, Minted};
use crate::metrics::Metrics;
use crate::policy::{Decision, Policy};
use crate::telemetry::{Span, in_child};
use crate::user_access::{DenyReason, Refused, UserAccess};
use opentelemetry::trace::SpanKind;

/// Why an exchange did not produce a token.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error(transparent)]
    Token(#[from] EntraError),
    #[error("the user is not a member of any group allowed to use this application")]
    NotInAllowedGroup,
    #[error("{0}")]
    GroupsNotInToken(&'static str),
    #[error("the user no longer exists in the directory")]
    UserMissing,
    #[error("the calling app {0} is not allowed: list its client id or one of its app roles in authorization.apps")]
    AppNotAllowed(String),
    #[error(
        "app tokens of tenant {0} are not accepted: app roles and client ids count only for the tenants in \
         authorization.apps.tenants (the home tenant by default)"
    )]
    AppTenantNotAllowed(String),
    #[error("Microsoft Graph: {0}")]
    Graph(GraphError),
    #[error(transparent)]
    Directory(#[from] DirectoryError),
    #[error(transparent)]
    Mint(#[from] MintError),
    /// The directory sync saw the user disabled, deleted or removed from every allowed group:
    /// newer than the token's `groups` claim.
    #[error("{}", .0.describe())]
    AccessRevoked(DenyReason),
    /// The Entra token was issued before the user's sessions were revoked (in Entra or by the
    /// kill switch); `cae`: the client can answer a claims challenge.
    #[error("access revoked: the user's sessions were revoked; sign in again")]
    SessionsRevoked { not_before: u64, cae: bool },
}

impl From<GraphError> for ExchangeError {
    fn from(e: GraphError) -> ExchangeError {
        if e.user_missing { ExchangeError::UserMissing } else { ExchangeError::Graph(e) }
    }
}

/// Who an exchange was for.
#[derive(Debug, Clone)]
pub enum Subject {
    /// A signed-in user and their record.
    User(Box<UserRecord>),
    /// An app caller (no user record).
    App(AppIdentity),
}

/// A successful exchange.
#[derive(Debug, Clone)]
pub struct Exchanged {
    pub minted: Minted,
    pub subject: Subject,
}

/// The cached answer to "which configured groups is this user in".
type Membership = BTreeSet<String>;

/// Cache lifetimes used by the exchange.
#[derive(Debug, Clone, Copy)]
struct Ttls {
    group: Duration,
    negative: Duration,
    profile: Duration,
}

/// An Entra token verified before, and the user's access epoch then.
#[derive(Clone)]
struct Verified {
    validated: Arc<Validated>,
    exp: u64,
    epoch: u64,
}

struct UntilEntraExpiry;

impl moka::Expiry<[u8; 32], Verified> for UntilEntraExpiry {
    fn expire_after_create(&self, _k: &[u8; 32], v: &Verified, _now: std::time::Instant) -> Option<Duration> {
        Some(Duration::from_secs(v.exp.saturating_sub(crate::clock::unix_now())))
    }
}

pub struct ExchangeService {
    entra: EntraValidator,
    /// Entra tokens already verified, by SHA-256.
    verified: moka::sync::Cache<[u8; 32], Verified>,
    graph: Option<Arc<GraphClient>>,
    mode: GraphMode,
    policy: Arc<ArcSwap<Policy>>,
    memberships: TieredCache<Membership>,
    profiles: TieredCache<Profile>,
    directory: Directory,
    issuer: Arc<Issuer>,
    ttls: Ttls,
    /// What the directory sync and the kill switch decided since the tokens were issued.
    access: Arc<UserAccess>,
}

/// Everything the exchange needs, wired by `server`.
pub struct ExchangeParts {
    pub entra: EntraValidator,
    pub graph: Option<Arc<GraphClient>>,
    pub mode: GraphMode,
    pub policy: Arc<ArcSwap<Policy>>,
    pub directory: Directory,
    pub issuer: Arc<Issuer>,
    pub cache: CacheSettings,
    pub metrics: Metrics,
    pub redis: Option<Arc<RedisStore>>,
    pub access: Arc<UserAccess>,
}

impl ExchangeService {
    pub fn new(p: ExchangeParts) -> ExchangeService {
        let verified = moka::sync::Cache::builder()
            .max_capacity(100_000)
            .expire_after(UntilEntraExpiry)
            .support_invalidation_closures()
            .build();
        ExchangeService {
            entra: p.entra,
            verified,
            graph: p.graph,
            mode: p.mode,
            policy: p.policy,
            memberships: TieredCache::new("groups", 100_000, p.metrics.clone(), p.redis.clone(), p.cache.l1_ttl),
            profiles: TieredCache::new("profile", 100_000, p.metrics, p.redis, p.cache.l1_ttl),
            directory: p.directory,
            issuer: p.issuer,
            ttls: Ttls { group: p.cache.group_ttl, negative: p.cache.negative_ttl, profile: p.cache.profile_ttl },
            access: p.access,
        }
    }

    pub fn entra(&self) -> &EntraValidator {
        &self.entra
    }

    /// Step 1: validate the Entra token (no Graph call yet): a user's, or an app's. A token
    /// verified before is taken from the cache while it has not expired and the user's access
    /// has not changed since.
    pub async fn validate(&self, token: &str) -> Result<Arc<Validated>, ExchangeError> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(hit) = self.verified.get(&key)
            && hit.exp > crate::clock::unix_now()
            && hit.epoch == self.epoch_of(&hit.validated)
        {
            return Ok(hit.validated);
        }
        // Boxed: a cache miss's future (JWKS fetch, RSA verification) is large; a hit's stays small.
        let checked = in_child("entra validate_token", SpanKind::Internal, Box::pin(self.entra.validate_until(token)));
        let (validated, exp) = checked.await?;
        let validated = Arc::new(validated);
        let epoch = self.epoch_of(&validated);
        self.verified.insert(key, Verified { validated: validated.clone(), exp, epoch });
        Ok(validated)
    }

    /// The user's access epoch (a change the directory sync or the kill switch made).
    fn epoch_of(&self, v: &Validated) -> u64 {
        match v {
            Validated::User(id) => self.access.entry(&UserAccess::key(&id.tid, &id.oid)).map_or(0, |e| e.epoch()),
            Validated::App(_) => 0,
        }
    }

    /// Drops the verified Entra tokens of a user (at logout): the next exchange verifies again.
    pub fn forget(&self, tid: &str, oid: &str) {
        let (tid, oid) = (tid.to_string(), oid.to_string());
        let _ = self.verified.invalidate_entries_if(move |_, v| match v.validated.as_ref() {
            Validated::User(id) => id.tid.eq_ignore_ascii_case(&tid) && id.oid.eq_ignore_ascii_case(&oid),
            Validated::App(_) => false,
        });
    }

    /// An app caller: let in only when `authorization.apps` lists it; its internal token
    /// carries its internal roles and no user.
    pub fn complete_app(&self, app: &AppIdentity) -> Result<Exchanged, ExchangeError> {
        let policy = self.policy.load();
        if !policy.apps_enabled() {
            return Err(ExchangeError::Token(self.entra.app_token_refusal(app)));
        }
        if !policy.apps_tenant_allowed(&app.tid) {
            return Err(ExchangeError::AppTenantNotAllowed(app.tid.clone()));
        }
        let roles = policy
            .decide_app(&app.tid, &app.client_id, &app.roles)
            .ok_or_else(|| ExchangeError::AppNotAllowed(app.client_id.clone()))?;
        let minted = self.issuer.mint_app(app, roles)?;
        Ok(Exchanged { minted, subject: Subject::App(app.clone()) })
    }

    /// Steps 2-5 for a validated token: groups, policy, profile, user record, internal token.
    pub async fn complete(&self, id: &EntraIdentity, token: &str) -> Result<Exchanged, ExchangeError> {
        let id = id.clone();
        // What the sync or the kill switch decided is newer than the token's claims.
        let user_key = UserAccess::key(&id.tid, &id.oid);
        match self.access.check_exchange(&user_key, id.iat) {
            Ok(()) => {}
            Err(Refused::Denied(reason)) => return Err(ExchangeError::AccessRevoked(reason)),
            Err(Refused::Before(not_before)) => {
                return Err(ExchangeError::SessionsRevoked { not_before, cae: id.cae_capable });
            }
        }
        let policy = self.policy.load_full();
        let session = self.session(token, &id.tid);
        let member_of =
            in_child("exchange groups", SpanKind::Internal, Box::pin(self.membership(&id, &policy, session.as_ref())))
                .await?;
        let (groups, roles) = match policy.decide(&member_of) {
            Decision::Allow { groups, roles } => (groups, roles),
            Decision::Deny => return Err(ExchangeError::NotInAllowedGroup),
        };
        let profile =
            in_child("exchange profile", SpanKind::Internal, Box::pin(self.profile(&id, session.as_ref()))).await?;
        let sync = Box::pin(self.directory.sync_login(&id.tid, &id.oid, &profile));
        let (user, _) = in_child("directory sync_login", SpanKind::Internal, sync).await?;
        let mint = Span::child("issuer mint", SpanKind::Internal);
        let minted = self.issuer.mint_with(&user, groups, roles, id.acrs.clone())?;
        drop(mint);
        Ok(Exchanged { minted, subject: Subject::User(Box::new(user)) })
    }

    /// Graph calls for a user of tenant `tid`, with tokens from that tenant.
    fn session<'a>(&'a self, token: &'a str, tid: &'a str) -> Option<GraphSession<'a>> {
        let graph = self.graph.as_deref()?;
        match self.mode {
            GraphMode::App => Some(graph.session(GraphAuth::App, tid)),
            GraphMode::Obo => Some(graph.session(GraphAuth::Obo { user_token: token }, tid)),
            GraphMode::Claims => None,
        }
    }

    async fn membership(
        &self,
        id: &EntraIdentity,
        policy: &Policy,
        session: Option<&GraphSession<'_>>,
    ) -> Result<BTreeSet<String>, ExchangeError> {
        if let GroupsClaim::Complete(groups) = &id.groups {
            return Ok(policy.relevant(groups));
        }
        let Some(session) = session else {
            return Err(ExchangeError::GroupsNotInToken(match id.groups {
                GroupsClaim::Overage => {
                    "the user is in too many groups for the token (group overage) and graph_mode is \
                     `claims`: switch graph_mode to app or obo, or emit only the groups assigned \
                     to the application"
                }
                _ => {
                    "the token carries no groups claim and graph_mode is `claims`: set \
                      groupMembershipClaims in the app registration"
                }
            }));
        };
        // The user's access epoch (a change the sync saw) starts a new decision.
        let epoch = self.access.entry(&UserAccess::key(&id.tid, &id.oid)).map_or(0, |e| e.epoch());
        let key = format!("{}:{}:{}:{epoch}", id.tid, id.oid, policy.fingerprint());
        let load = || async {
            let found = session.member_groups(&id.oid, policy.configured_groups()).await?;
            let ttl = match policy.decide(&found) {
                Decision::Allow { .. } => self.ttls.group,
                Decision::Deny => self.ttls.negative,
            };
            Ok::<_, GraphError>((found, ttl))
        };
        Ok(self.memberships.get_or_load(key, load).await.map_err(|e| (*e).clone())?)
    }

    async fn profile(&self, id: &EntraIdentity, session: Option<&GraphSession<'_>>) -> Result<Profile, ExchangeError> {
        let Some(session) = session else {
            return Ok(profile_from_claims(id));
        };
        let key = format!("{}:{}", id.tid, id.oid);
        let load = || async { Ok::<_, GraphError>((session.profile(&id.oid).await?, self.ttls.profile)) };
        Ok(self.profiles.get_or_load(key, load).await.map_err(|e| (*e).clone())?)
    }
}

/// `claims` mode: the profile comes from the validated token, Graph is never called.
fn profile_from_claims(id: &EntraIdentity) -> Profile {
    Profile {
        mail: id.email.clone(),
        display_name: id.name.clone(),
        user_principal_name: id.username.clone(),
        given_name: id.given_name.clone(),
        surname: id.family_name.clone(),
        job_title: None,
        department: None,
    }
}
