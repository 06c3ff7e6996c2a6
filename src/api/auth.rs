//! Authentication and the authorisation matrix, as a tower layer in front of
//! every service: a bearer API key in `authorization` metadata, checked
//! against its stored hash; the caller's role checked against the method.
//!
//! Missing or bad key: UNAUTHENTICATED. Valid key, wrong role: PERMISSION_DENIED.
//! Denials are logged with the key id, never the key, at most one line a
//! second per kind of denial (with the count of those left out).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tonic::Status;

use super::status::ApiError;

use super::client_cert;
use crate::domain::access::PresentedKey;
use crate::domain::{Caller, HospitalId, Role};
use crate::store::keys::StoredKey;
use crate::store::{Store, StoreError};
use crate::throttled_warn;
use crate::wire::pb;

/// How long a looked-up key is trusted before it is read again; a revoked
/// key stops working within this time on every replica.
pub const KEY_CACHE_TTL: Duration = Duration::from_secs(5);

/// How often the ids of the usable keys are read again: a key created or
/// revoked through another replica, or with the `keys` command, counts here
/// within this time (through this replica, at once).
pub const KEY_SET_REFRESH: Duration = Duration::from_secs(2);

/// Keys read per query when the key ids are read again.
const KEY_SET_PAGE: i64 = 1000;

/// Most keys remembered at once.
const KEY_CACHE_CAPACITY: usize = 10_000;

const HEALTH: &str = tonic_health::pb::health_server::SERVICE_NAME;
const INGEST: &str = pb::ingest_service_server::SERVICE_NAME;
const AUDIT: &str = pb::audit_service_server::SERVICE_NAME;
const REGISTRY: &str = pb::registry_service_server::SERVICE_NAME;
const ADMIN: &str = pb::admin_service_server::SERVICE_NAME;
const INVESTIGATION: &str = pb::investigation_service_server::SERVICE_NAME;

/// Who may call a method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, unauthenticated: the health check (Check, not Watch).
    Open,
    /// Any valid key: server reflection.
    AnyRole,
    /// Keys of these roles only.
    Roles(&'static [Role]),
}

/// The authorisation matrix: what a gRPC method path requires.
pub fn access_for(path: &str) -> Access {
    let (service, method) = path
        .trim_start_matches('/')
        .split_once('/')
        .unwrap_or((path, ""));
    match (service, method) {
        // Probes call Check; a Watch stream is held open, so it needs a key.
        (HEALTH, "Check") => Access::Open,
        (HEALTH, _) => Access::AnyRole,
        (INGEST, _) => Access::Roles(&[Role::Hospital]),
        (AUDIT, _) => Access::Roles(&[Role::Auditor]),
        (INVESTIGATION, "ListAccessLog") => Access::Roles(&[Role::Admin]),
        (REGISTRY, "GetClinic" | "ListClinics") => Access::Roles(&[Role::Admin, Role::Auditor]),
        (REGISTRY, _) => Access::Roles(&[Role::Admin]),
        (ADMIN, _) => Access::Roles(&[Role::Admin]),
        (
            INVESTIGATION,
            "CreateCase" | "AddFlagsToCase" | "RemoveFlagFromCase" | "AssignCase"
            | "UpdateCaseStatus" | "AddCaseNote",
        ) => Access::Roles(&[Role::Auditor]),
        (INVESTIGATION, _) => Access::Roles(&[Role::Auditor, Role::Admin]),
        // Reflection, and unknown methods (which answer UNIMPLEMENTED).
        _ => Access::AnyRole,
    }
}

/// The ids of the keys that can be used, as last read, and what this
/// replica changed since.
#[derive(Debug, Default)]
struct KnownKeys {
    /// `None` until the first read.
    ids: Option<HashSet<String>>,
    /// When the read that `ids` holds began.
    read_at: Option<Instant>,
    /// Keys created (true) or revoked (false) through this replica, with
    /// when: a read that began before the change does not hold it.
    changes: Vec<(Instant, String, bool)>,
}

impl KnownKeys {
    fn apply(&mut self, key_id: &str, usable: bool) {
        if let Some(ids) = self.ids.as_mut() {
            if usable {
                ids.insert(key_id.to_owned());
            } else {
                ids.remove(key_id);
            }
        }
    }
}

/// Checks presented keys against the stored ones. An id that is not one of
/// the usable keys' (read every [`KEY_SET_REFRESH`]) is refused from memory,
/// so a flood of made-up keys costs no database read; the others are read
/// through a short-lived cache.
#[derive(Debug)]
pub struct Authenticator {
    store: Store,
    known: Mutex<KnownKeys>,
    cache: Mutex<HashMap<String, (Instant, Option<StoredKey>)>>,
    lookups: AtomicU64,
}

impl Authenticator {
    /// Authenticates against the keys in `store`; refuses every key until
    /// [`Authenticator::refresh`] has read them once.
    pub fn new(store: Store) -> Self {
        Self {
            store,
            known: Mutex::new(KnownKeys::default()),
            cache: Mutex::new(HashMap::new()),
            lookups: AtomicU64::new(0),
        }
    }

    /// Reads the ids of the usable keys again; returns how many there are.
    /// Keys go through the store's own reading of key rows.
    pub async fn refresh(&self) -> Result<usize, StoreError> {
        let started = Instant::now();
        let now = chrono::Utc::now();
        let mut ids = HashSet::new();
        let mut before = None;
        loop {
            let page = self.store.keys(before, KEY_SET_PAGE).await?;
            ids.extend(
                page.keys
                    .into_iter()
                    .filter(|k| k.is_usable_at(now))
                    .map(|k| k.key_id),
            );
            match page.next_before {
                Some(next) => before = Some(next),
                None => break,
            }
        }
        let count = ids.len();
        let mut known = lock(&self.known);
        if known.read_at.is_some_and(|at| at > started) {
            // A read that began later finished first: it is the fresher.
            return Ok(count);
        }
        lock(&self.cache).retain(|key_id, _| ids.contains(key_id));
        known.ids = Some(ids);
        known.read_at = Some(started);
        known.changes.retain(|(at, _, _)| *at >= started);
        let changes = std::mem::take(&mut known.changes);
        for (_, key_id, usable) in &changes {
            known.apply(key_id, *usable);
        }
        known.changes = changes;
        Ok(count)
    }

    /// Reads the usable keys every [`KEY_SET_REFRESH`], for ever; while the
    /// database is unreachable the last set read stays in force.
    pub async fn keep_fresh(self: Arc<Self>) {
        let mut failing = false;
        loop {
            tokio::time::sleep(KEY_SET_REFRESH).await;
            match self.refresh().await {
                Ok(_) if failing => {
                    tracing::info!("API keys read again");
                    failing = false;
                }
                Ok(_) => {}
                Err(e) if !failing => {
                    tracing::warn!(error = %e, "cannot read the API keys; keeping the last ones read");
                    failing = true;
                }
                Err(_) => {}
            }
        }
    }

    /// How many times a key has been read from the database to check a
    /// presented one.
    pub fn key_lookups(&self) -> u64 {
        self.lookups.load(Ordering::Relaxed)
    }

    /// The caller a header value identifies, or UNAUTHENTICATED.
    pub async fn authenticate(&self, header: Option<&str>) -> Result<Caller, ApiError> {
        let presented = header
            .and_then(PresentedKey::from_bearer)
            .ok_or(ApiError::KeyMissing)?;
        match lock(&self.known).ids.as_ref() {
            Some(ids) if ids.contains(&presented.key_id) => {}
            Some(_) => return Err(ApiError::KeyRefused),
            // Never read: the database was unreachable since the start.
            None => return Err(ApiError::Unavailable),
        }
        let stored = self.lookup(&presented.key_id).await?;
        let stored = stored
            .filter(|s| presented.matches(&s.secret_hash))
            .ok_or(ApiError::KeyRefused)?;
        usable_caller(stored)
    }

    /// The caller of key `key_id`, authenticated earlier (a console
    /// session), while the key is still usable; UNAUTHENTICATED once it is
    /// revoked or expired.
    pub async fn still_usable(&self, key_id: &str) -> Result<Caller, ApiError> {
        match lock(&self.known).ids.as_ref() {
            Some(ids) if ids.contains(key_id) => {}
            Some(_) => return Err(ApiError::KeyRefused),
            None => return Err(ApiError::Unavailable),
        }
        let stored = self.lookup(key_id).await?.ok_or(ApiError::KeyRefused)?;
        usable_caller(stored)
    }

    async fn lookup(&self, key_id: &str) -> Result<Option<StoredKey>, ApiError> {
        if let Some(hit) = self.cached(key_id) {
            return Ok(hit);
        }
        self.lookups.fetch_add(1, Ordering::Relaxed);
        let found = match self.store.key(key_id).await {
            Ok(found) => found,
            // A row forged behind the service (logged by the store) is no key.
            Err(StoreError::Tampered(_)) => None,
            Err(e) => return Err(e.into()),
        };
        let mut cache = lock(&self.cache);
        if cache.len() >= KEY_CACHE_CAPACITY {
            cache.clear();
        }
        cache.insert(key_id.to_owned(), (Instant::now(), found.clone()));
        Ok(found)
    }

    /// Takes a key created through this replica into account at once
    /// (other replicas follow within [`KEY_SET_REFRESH`]).
    pub fn learn(&self, key_id: &str) {
        self.change(key_id, true);
    }

    /// Forgets a key, so a revocation through this replica takes effect at
    /// once (other replicas follow within [`KEY_SET_REFRESH`]).
    pub fn forget(&self, key_id: &str) {
        lock(&self.cache).remove(key_id);
        self.change(key_id, false);
    }

    fn change(&self, key_id: &str, usable: bool) {
        let mut known = lock(&self.known);
        known.apply(key_id, usable);
        known
            .changes
            .push((Instant::now(), key_id.to_owned(), usable));
    }

    fn cached(&self, key_id: &str) -> Option<Option<StoredKey>> {
        lock(&self.cache)
            .get(key_id)
            .filter(|(at, _)| at.elapsed() < KEY_CACHE_TTL)
            .map(|(_, key)| key.clone())
    }

    /// Authenticates and authorises one call to `path`.
    pub async fn admit(
        &self,
        path: &str,
        header: Option<&str>,
    ) -> Result<Option<Caller>, ApiError> {
        let access = access_for(path);
        if access == Access::Open {
            return Ok(None);
        }
        let caller = match self.authenticate(header).await {
            Ok(caller) => caller,
            Err(status) => {
                let key_id = header.and_then(PresentedKey::from_bearer).map(|k| k.key_id);
                throttled_warn!(
                    key_id = key_id.as_deref().unwrap_or("-"),
                    method = path,
                    "unauthenticated call refused"
                );
                return Err(status);
            }
        };
        if let Access::Roles(roles) = access {
            if !roles.contains(&caller.role) {
                throttled_warn!(key_id = %caller.key_id, role = %caller.role, method = path, "call denied");
                return Err(ApiError::RoleNotAllowed {
                    role: caller.role,
                    method: path.to_owned(),
                });
            }
        }
        Ok(Some(caller))
    }
}

/// The caller a stored key stands for, if the key is usable now.
fn usable_caller(stored: StoredKey) -> Result<Caller, ApiError> {
    if !stored.key.is_usable_at(chrono::Utc::now()) {
        return Err(ApiError::KeyRefused);
    }
    Ok(Caller {
        key_id: stored.key.key_id,
        role: stored.key.role,
        hospital_id: stored.key.hospital_id.as_deref().map(HospitalId::normalize),
        principal: stored.key.principal,
        issued_by: stored.key.issued_by,
    })
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The authenticated caller of a request, as the layer left it.
pub fn caller<T>(request: &tonic::Request<T>) -> Result<&Caller, ApiError> {
    request
        .extensions()
        .get::<Caller>()
        .ok_or(ApiError::KeyMissing)
}

/// Refuses a hospital key acting for another hospital (ids compared in
/// their normal form), and logs the denial.
pub fn check_hospital(caller: &Caller, hospital_id: &str) -> Result<(), ApiError> {
    let own = caller
        .hospital_id
        .as_ref()
        .is_some_and(|h| h.is(hospital_id));
    if caller.role == Role::Hospital && !own {
        throttled_warn!(key_id = %caller.key_id, "record for another hospital refused");
        return Err(ApiError::OtherHospital);
    }
    Ok(())
}

/// The tower layer that admits calls.
#[derive(Clone, Debug)]
pub struct AuthLayer {
    auth: Arc<Authenticator>,
    bind_client_certs: bool,
}

impl AuthLayer {
    /// Admits calls with `auth`; with `bind_client_certs` (mutual TLS), a
    /// hospital key only on a connection with its hospital's certificate.
    pub fn new(auth: Arc<Authenticator>, bind_client_certs: bool) -> Self {
        Self {
            auth,
            bind_client_certs,
        }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            auth: self.auth.clone(),
            bind_client_certs: self.bind_client_certs,
        }
    }
}

/// The service [`AuthLayer`] wraps around the router.
#[derive(Clone, Debug)]
pub struct AuthService<S> {
    inner: S,
    auth: Arc<Authenticator>,
    bind_client_certs: bool,
}

/// Refuses a hospital key used without its hospital's client certificate.
fn check_client_cert<B>(request: &http::Request<B>, caller: &Caller) -> Result<(), ApiError> {
    let Some(hospital) = &caller.hospital_id else {
        return Ok(());
    };
    let bound = client_cert::presented(request)
        .is_some_and(|cert| client_cert::names_hospital(&cert, hospital));
    if bound {
        return Ok(());
    }
    throttled_warn!(
        key_id = %caller.key_id,
        "hospital key refused: the client certificate is not its hospital's"
    );
    Err(ApiError::CertificateMismatch)
}

impl<S, B> tower::Service<http::Request<B>> for AuthService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The clone is fresh; the ready one goes with this call (tower's rule).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let auth = self.auth.clone();
        let bind_client_certs = self.bind_client_certs;
        Box::pin(async move {
            let header = request
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok());
            let admitted = auth
                .admit(request.uri().path(), header)
                .await
                .and_then(|caller| match caller {
                    Some(caller) if bind_client_certs => {
                        check_client_cert(&request, &caller).map(|()| Some(caller))
                    }
                    caller => Ok(caller),
                });
            match admitted {
                Ok(caller) => {
                    if let Some(caller) = caller {
                        request.extensions_mut().insert(caller);
                    }
                    inner.call(request).await
                }
                Err(err) => Ok(Status::from(err).into_http()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_matrix() {
        use Access::*;
        assert_eq!(access_for("/grpc.health.v1.Health/Check"), Open);
        assert_eq!(access_for("/grpc.health.v1.Health/Watch"), AnyRole);
        assert_eq!(
            access_for("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
            AnyRole
        );
        assert_eq!(
            access_for("/transplant_audit.v1.IngestService/SubmitRecord"),
            Roles(&[Role::Hospital])
        );
        assert_eq!(
            access_for("/transplant_audit.v1.AuditService/ListFlags"),
            Roles(&[Role::Auditor])
        );
        assert_eq!(
            access_for("/transplant_audit.v1.RegistryService/UpsertClinic"),
            Roles(&[Role::Admin])
        );
        assert_eq!(
            access_for("/transplant_audit.v1.RegistryService/ListClinics"),
            Roles(&[Role::Admin, Role::Auditor])
        );
        assert_eq!(
            access_for("/transplant_audit.v1.AdminService/Rescan"),
            Roles(&[Role::Admin])
        );
        assert_eq!(
            access_for("/transplant_audit.v1.InvestigationService/SearchRecords"),
            Roles(&[Role::Auditor, Role::Admin])
        );
        assert_eq!(
            access_for("/transplant_audit.v1.InvestigationService/ListAccessLog"),
            Roles(&[Role::Admin])
        );
    }

    #[test]
    fn hospitals_act_only_for_themselves() {
        let hospital = Caller {
            key_id: "k".into(),
            role: Role::Hospital,
            hospital_id: Some(HospitalId::normalize("H-1")),
            principal: "hospital H-1".into(),
            issued_by: None,
        };
        assert!(check_hospital(&hospital, "H-1").is_ok());
        assert!(
            check_hospital(&hospital, " h-1 ").is_ok(),
            "one normal form"
        );
        assert!(matches!(
            check_hospital(&hospital, "H-2"),
            Err(ApiError::OtherHospital)
        ));
    }
}
