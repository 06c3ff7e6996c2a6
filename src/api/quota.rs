//! Quotas per tenant, so that no tenant starves another: a hospital (all
//! its keys together) or another key holding its calls open reaches its own
//! quota long before the server's caps, which stay as the backstop. And a
//! small cap on `grpc.health.v1.Health/Watch` streams, which probes do not
//! use.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tokio::sync::Semaphore;
use tonic::Status;

use super::call_cap::holding;
use super::status::ApiError;
use crate::domain::Caller;
use crate::domain::access::Tenant;
use crate::throttled_warn;

/// The health method that streams and so takes a watch slot.
pub const HEALTH_WATCH: &str = "/grpc.health.v1.Health/Watch";

/// At most `limit` of something at once per tenant.
#[derive(Debug)]
pub struct TenantQuota {
    limit: usize,
    held: Mutex<HashMap<Tenant, usize>>,
}

impl TenantQuota {
    /// At most `limit` at once for each tenant.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            held: Mutex::new(HashMap::new()),
        })
    }

    /// The quota of every tenant.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// A slot of `tenant`'s, held until the permit is dropped; `None` when
    /// the tenant holds its quota.
    pub fn try_acquire(self: &Arc<Self>, tenant: &Tenant) -> Option<QuotaPermit> {
        let mut held = self.lock();
        let count = held.entry(tenant.clone()).or_insert(0);
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(QuotaPermit {
            quota: self.clone(),
            tenant: tenant.clone(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Tenant, usize>> {
        self.held
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One slot of a tenant's quota; dropping it gives the slot back.
#[derive(Debug)]
pub struct QuotaPermit {
    quota: Arc<TenantQuota>,
    tenant: Tenant,
}

impl Drop for QuotaPermit {
    fn drop(&mut self) {
        let mut held = self.quota.lock();
        if let Some(count) = held.get_mut(&self.tenant) {
            *count -= 1;
            // Only tenants with calls in flight take memory.
            if *count == 0 {
                held.remove(&self.tenant);
            }
        }
    }
}

/// The layer holding each authenticated call to its tenant's quota of calls
/// in flight, and `Health/Watch` to the cap on watches. It runs after
/// authentication, which leaves the caller in the request.
#[derive(Clone, Debug)]
pub struct TenantCap {
    calls: Arc<TenantQuota>,
    health_watches: Arc<Semaphore>,
    max_health_watches: usize,
}

impl TenantCap {
    /// At most `calls_per_tenant` calls in flight per tenant and
    /// `health_watches` health watches in all.
    pub fn new(calls_per_tenant: usize, health_watches: usize) -> Self {
        Self {
            calls: TenantQuota::new(calls_per_tenant),
            health_watches: Arc::new(Semaphore::new(health_watches)),
            max_health_watches: health_watches,
        }
    }
}

impl<S> tower::Layer<S> for TenantCap {
    type Service = TenantCapped<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TenantCapped {
            inner,
            cap: self.clone(),
        }
    }
}

/// The service [`TenantCap`] wraps.
#[derive(Clone, Debug)]
pub struct TenantCapped<S> {
    inner: S,
    cap: TenantCap,
}

impl TenantCap {
    /// The permits a call to `path` by `caller` holds, or why it is refused.
    #[allow(clippy::type_complexity)]
    fn admit(
        &self,
        path: &str,
        caller: Option<&Caller>,
    ) -> Result<
        (
            Option<tokio::sync::OwnedSemaphorePermit>,
            Option<QuotaPermit>,
        ),
        ApiError,
    > {
        let watch = if path == HEALTH_WATCH {
            let permit = self
                .health_watches
                .clone()
                .try_acquire_owned()
                .map_err(|_| {
                    throttled_warn!(method = path, "health watch refused: too many open");
                    ApiError::TooManyHealthWatches {
                        limit: self.max_health_watches,
                    }
                })?;
            Some(permit)
        } else {
            None
        };
        let call = match caller {
            Some(caller) => {
                let tenant = caller.tenant();
                let permit = self.calls.try_acquire(&tenant).ok_or_else(|| {
                    throttled_warn!(%tenant, key_id = %caller.key_id, method = path, "call refused: the tenant's calls in flight are at their quota");
                    ApiError::TenantTooManyCalls {
                        limit: self.calls.limit(),
                    }
                })?;
                Some(permit)
            }
            None => None,
        };
        Ok((watch, call))
    }
}

impl<S, B> tower::Service<http::Request<B>> for TenantCapped<S>
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

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let admitted = self
            .cap
            .admit(request.uri().path(), request.extensions().get::<Caller>());
        Box::pin(async move {
            match admitted {
                Ok(permits) => Ok(holding(inner.call(request).await?, permits)),
                Err(err) => Ok(Status::from(err).into_http()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{HospitalId, Role};

    fn caller(key_id: &str, hospital: Option<&str>) -> Caller {
        Caller {
            key_id: key_id.into(),
            role: if hospital.is_some() {
                Role::Hospital
            } else {
                Role::Auditor
            },
            hospital_id: hospital.map(HospitalId::normalize),
            principal: key_id.into(),
            issued_by: None,
        }
    }

    #[test]
    fn a_tenant_holds_its_quota_and_gives_it_back() {
        let quota = TenantQuota::new(2);
        let a1 = caller("a1", Some("H-1")).tenant();
        let a2 = caller("a2", Some("h-1")).tenant();
        let b = caller("b", Some("H-2")).tenant();
        let first = quota.try_acquire(&a1).expect("first");
        let second = quota.try_acquire(&a2).expect("second, another key of H-1");
        assert!(
            quota.try_acquire(&a1).is_none(),
            "H-1's keys share its quota"
        );
        let other = quota.try_acquire(&b).expect("H-2 has its own");
        drop(second);
        let again = quota.try_acquire(&a1).expect("a slot came back");
        drop((first, again, other));
        assert!(quota.lock().is_empty(), "idle tenants take no memory");
    }

    #[test]
    fn health_watches_are_capped_and_calls_held_to_their_tenant() {
        let cap = TenantCap::new(1, 1);
        let auditor = caller("k", None);
        let watch = cap.admit(HEALTH_WATCH, Some(&auditor)).expect("a watch");
        assert!(matches!(
            cap.admit(HEALTH_WATCH, Some(&caller("other", None))),
            Err(ApiError::TooManyHealthWatches { limit: 1 })
        ));
        assert!(matches!(
            cap.admit("/x/Y", Some(&auditor)),
            Err(ApiError::TenantTooManyCalls { limit: 1 })
        ));
        drop(watch);
        assert!(cap.admit("/grpc.health.v1.Health/Check", None).is_ok());
    }
}
