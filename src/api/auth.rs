//! Authentication and the authorisation matrix, as a tower layer in front of
//! every service: a bearer API key in `authorization` metadata, checked
//! against its stored hash; the caller's role checked against the method.
//!
//! Missing or bad key: UNAUTHENTICATED. Valid key, wrong role: PERMISSION_DENIED.
//! Every denial is logged with the key id, never the key.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tonic::Status;

use super::status::ApiError;

use super::client_cert;
use crate::domain::access::PresentedKey;
use crate::domain::{Caller, HospitalId, Role};
use crate::store::Store;
use crate::store::keys::StoredKey;
use crate::wire::pb;

/// How long a looked-up key is trusted before it is read again; a revoked
/// key stops working within this time on every replica.
pub const KEY_CACHE_TTL: Duration = Duration::from_secs(5);

/// Most keys (or unknown key ids) remembered at once.
const KEY_CACHE_CAPACITY: usize = 10_000;

const HEALTH: &str = tonic_health::pb::health_server::SERVICE_NAME;
const INGEST: &str = pb::ingest_service_server::SERVICE_NAME;
const AUDIT: &str = pb::audit_service_server::SERVICE_NAME;
const REGISTRY: &str = pb::registry_service_server::SERVICE_NAME;
const ADMIN: &str = pb::admin_service_server::SERVICE_NAME;

/// Who may call a method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, unauthenticated: the health check.
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
        (HEALTH, _) => Access::Open,
        (INGEST, _) => Access::Roles(&[Role::Hospital]),
        (AUDIT, _) => Access::Roles(&[Role::Auditor]),
        (REGISTRY, "GetClinic" | "ListClinics") => Access::Roles(&[Role::Admin, Role::Auditor]),
        (REGISTRY, _) => Access::Roles(&[Role::Admin]),
        (ADMIN, _) => Access::Roles(&[Role::Admin]),
        // Reflection, and unknown methods (which answer UNIMPLEMENTED).
        _ => Access::AnyRole,
    }
}

/// Checks presented keys against the stored ones, with a short-lived cache.
#[derive(Debug)]
pub struct Authenticator {
    store: Store,
    cache: Mutex<HashMap<String, (Instant, Option<StoredKey>)>>,
}

impl Authenticator {
    /// Authenticates against the keys in `store`.
    pub fn new(store: Store) -> Self {
        Self {
            store,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The caller a header value identifies, or UNAUTHENTICATED.
    pub async fn authenticate(&self, header: Option<&str>) -> Result<Caller, ApiError> {
        let presented = header
            .and_then(PresentedKey::from_bearer)
            .ok_or(ApiError::KeyMissing)?;
        let stored = self.lookup(&presented.key_id).await?;
        let stored = stored
            .filter(|s| presented.matches(&s.secret_hash))
            .ok_or(ApiError::KeyRefused)?;
        if !stored.key.is_usable_at(chrono::Utc::now()) {
            return Err(ApiError::KeyRefused);
        }
        Ok(Caller {
            key_id: stored.key.key_id,
            role: stored.key.role,
            hospital_id: stored.key.hospital_id.as_deref().map(HospitalId::normalize),
        })
    }

    async fn lookup(&self, key_id: &str) -> Result<Option<StoredKey>, ApiError> {
        if let Some(hit) = self.cached(key_id) {
            return Ok(hit);
        }
        let found = self.store.key(key_id).await?;
        let mut cache = self
            .cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if cache.len() >= KEY_CACHE_CAPACITY {
            cache.clear();
        }
        cache.insert(key_id.to_owned(), (Instant::now(), found.clone()));
        Ok(found)
    }

    /// Forgets what is cached of a key, so a revocation through this replica
    /// takes effect at once (other replicas follow within [`KEY_CACHE_TTL`]).
    pub fn forget(&self, key_id: &str) {
        self.cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(key_id);
    }

    fn cached(&self, key_id: &str) -> Option<Option<StoredKey>> {
        let cache = self
            .cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        cache
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
                tracing::warn!(
                    key_id = key_id.as_deref().unwrap_or("-"),
                    method = path,
                    "unauthenticated call refused"
                );
                return Err(status);
            }
        };
        if let Access::Roles(roles) = access {
            if !roles.contains(&caller.role) {
                tracing::warn!(key_id = %caller.key_id, role = %caller.role, method = path, "call denied");
                return Err(ApiError::RoleNotAllowed {
                    role: caller.role,
                    method: path.to_owned(),
                });
            }
        }
        Ok(Some(caller))
    }
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
        tracing::warn!(key_id = %caller.key_id, "record for another hospital refused");
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
    tracing::warn!(
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
    }

    #[test]
    fn hospitals_act_only_for_themselves() {
        let hospital = Caller {
            key_id: "k".into(),
            role: Role::Hospital,
            hospital_id: Some(HospitalId::normalize("H-1")),
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
