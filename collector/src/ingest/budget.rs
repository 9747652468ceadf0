//! What all requests in flight may hold in memory together (`otlp.max_in_flight_bytes`).
//!
//! The per-request limits bound one request; without this, a sender that opens many
//! connections multiplies them. A request reserves its share before its body is read (its
//! `Content-Length`, or `otlp.max_request_bytes` when the length is unknown; twice that over
//! gRPC, where the message is read into tonic's buffer and copied out of it), keeps what the
//! body turned out to be once read, adds [`DECODED_COPIES`] times the decoded size before
//! decoding, and releases it all when it is answered, which is after the pipeline has
//! processed its rows. When the budget cannot cover a request it is refused at once with
//! 503 / UNAVAILABLE (retryable), never queued: memory is what ran out, so waiting requests
//! would hold more of it. The Kafka source reserves twice each batch it hands over until the
//! batch is acknowledged, and pauses its partitions while the budget is spent.

use std::sync::Arc;

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Budget units: permits are KiB so that any byte count up to 4 TiB fits a `u32` request.
const UNIT: usize = 1024;

fn units(bytes: usize) -> usize {
    bytes.div_ceil(UNIT).max(1)
}

/// How many times its decoded size a request holds at most, beside its body: the decoded
/// request, the rows built from it, and their copy when the batcher joins batches. (Measured
/// with `verity-loadgen --shape wide|shared --connections 64`: with two copies the budget was
/// overrun by the joined batches.)
pub const DECODED_COPIES: usize = 3;

/// What decoding a request of `decoded` bytes adds to what its body holds.
pub fn decoded_cost(decoded: usize) -> usize {
    decoded.saturating_mul(DECODED_COPIES)
}

/// What a gRPC message of `len` bytes holds while it is read: tonic's buffer and the copy
/// handed to the service.
pub fn grpc_body_bytes(len: usize) -> usize {
    len.saturating_mul(2)
}

/// The shared budget. Cloning shares it.
#[derive(Clone)]
pub struct InFlightBudget {
    permits: Arc<Semaphore>,
    total: usize,
    in_use: Gauge,
}

/// The budget is spent: the request is refused (503 / UNAVAILABLE) and the client retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("Verity's requests in flight hold all of otlp.max_in_flight_bytes ({total} bytes); retry with backoff")]
pub struct BudgetSpent {
    pub total: usize,
}

impl InFlightBudget {
    /// `in_use` is set to the bytes reserved (`verity_otlp_in_flight_bytes`).
    pub fn new(bytes: usize, in_use: Gauge) -> Self {
        let total = units(bytes);
        Self {
            permits: Arc::new(Semaphore::new(total)),
            total,
            in_use,
        }
    }

    /// Reserves `bytes` (at most the whole budget, so one request of any allowed size can
    /// always run alone).
    pub fn try_reserve(&self, bytes: usize) -> Result<Reservation, BudgetSpent> {
        let n = self.clamp(bytes);
        let permit = Arc::clone(&self.permits)
            .try_acquire_many_owned(n)
            .map_err(|_| self.spent())?;
        let r = Reservation {
            budget: self.clone(),
            permit: Some(permit),
        };
        r.publish();
        Ok(r)
    }

    /// Waits until `bytes` can be reserved: for sources that pause instead of refusing.
    pub async fn reserve(&self, bytes: usize) -> Reservation {
        let n = self.clamp(bytes);
        let permit = Arc::clone(&self.permits).acquire_many_owned(n).await.ok();
        let r = Reservation {
            budget: self.clone(),
            permit,
        };
        r.publish();
        r
    }

    fn clamp(&self, bytes: usize) -> u32 {
        u32::try_from(units(bytes).min(self.total)).unwrap_or(u32::MAX)
    }

    fn spent(&self) -> BudgetSpent {
        BudgetSpent {
            total: self.total.saturating_mul(UNIT),
        }
    }

    fn reserved_bytes(&self) -> usize {
        self.total
            .saturating_sub(self.permits.available_permits())
            .saturating_mul(UNIT)
    }
}

/// One request's share of the budget, released when dropped.
pub struct Reservation {
    budget: InFlightBudget,
    permit: Option<OwnedSemaphorePermit>,
}

impl Reservation {
    /// Keeps only `bytes` of what was reserved (the body turned out smaller than reserved).
    pub fn shrink_to(&mut self, bytes: usize) {
        let keep = units(bytes);
        if let Some(permit) = self.permit.as_mut() {
            let extra = permit.num_permits().saturating_sub(keep);
            if extra > 0 {
                drop(permit.split(extra));
            }
        }
        self.publish();
    }

    /// Grows the reservation to `bytes` in all, if the budget has room (never past the whole
    /// budget).
    pub fn grow_to(&mut self, bytes: usize) -> Result<(), BudgetSpent> {
        let want = units(bytes).min(self.budget.total);
        let held = self.permit.as_ref().map_or(0, OwnedSemaphorePermit::num_permits);
        let Some(extra) = want.checked_sub(held).filter(|e| *e > 0) else {
            return Ok(());
        };
        let extra = u32::try_from(extra).map_err(|_| self.budget.spent())?;
        let more = Arc::clone(&self.budget.permits)
            .try_acquire_many_owned(extra)
            .map_err(|_| self.budget.spent())?;
        match self.permit.as_mut() {
            Some(p) => p.merge(more),
            None => self.permit = Some(more),
        }
        self.publish();
        Ok(())
    }

    /// Grows the reservation by `bytes`, if the budget has room (see [`Reservation::grow_to`]).
    pub fn grow_by(&mut self, bytes: usize) -> Result<(), BudgetSpent> {
        self.grow_to(self.bytes().saturating_add(bytes))
    }

    /// Bytes this reservation holds.
    pub fn bytes(&self) -> usize {
        self.permit
            .as_ref()
            .map_or(0, OwnedSemaphorePermit::num_permits)
            .saturating_mul(UNIT)
    }

    fn publish(&self) {
        self.budget
            .in_use
            .set(i64::try_from(self.budget.reserved_bytes()).unwrap_or(i64::MAX));
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        drop(self.permit.take());
        self.publish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_share_one_budget_and_give_it_back() {
        let gauge = Gauge::default();
        let budget = InFlightBudget::new(10 << 20, gauge.clone());
        let mut a = budget.try_reserve(8 << 20).expect("first");
        assert_eq!(gauge.get(), 8 << 20);
        assert_eq!(budget.try_reserve(8 << 20).err(), Some(BudgetSpent { total: 10 << 20 }));
        a.shrink_to(1000);
        assert_eq!(a.bytes(), 1024);
        let mut b = budget.try_reserve(8 << 20).expect("room after the shrink");
        assert!(b.grow_to(9 << 20).is_ok());
        assert!(a.grow_to(2 << 20).is_err(), "a cannot grow past what b holds");
        drop(b);
        assert!(a.grow_to(2 << 20).is_ok());
        drop(a);
        assert_eq!(gauge.get(), 0);
    }

    #[test]
    fn one_request_larger_than_the_budget_runs_alone() {
        let budget = InFlightBudget::new(1 << 20, Gauge::default());
        let mut r = budget.try_reserve(64 << 20).expect("clamped to the whole budget");
        assert_eq!(r.bytes(), 1 << 20);
        assert!(r.grow_to(128 << 20).is_ok(), "already holds it all");
        assert!(budget.try_reserve(1).is_err());
    }
}
