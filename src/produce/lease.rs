//! One run per job: a run holds a lease on its job in the state database
//! (the job's run record) and renews it while it works. A second run of the
//! job is told who holds it and waits or gives up; it never mistakes a live
//! run for a dead one. Only a lease that lapsed — its holder stopped
//! renewing, because it died or failed — is taken over, and only then does
//! the new run read back what the old one sent.
//!
//! Leases use each process's own clock: `produce.lease` must exceed the
//! clock skew between the machines that run the same job.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::state::{Acquire, StateError, StateStore, UnfinishedRun};
use crate::clock::now_ms;

/// How often, while waiting for a lease, the holder is looked up again.
const WAIT_POLL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("the job is held by another run ({})", .0.run_id)]
    Held(Box<UnfinishedRun>),
    #[error("shutdown while waiting for the job's lease")]
    Interrupted,
    #[error(transparent)]
    State(#[from] StateError),
}

/// How a run lost its lease; it must stop sending at once.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LeaseLost {
    #[error("another run took over the job's lease (this run did not renew it in time)")]
    TakenOver,
    #[error(
        "could not renew the job's lease for {}: {error}",
        humantime::format_duration(*duration)
    )]
    NotRenewed {
        duration: Duration,
        error: Arc<StateError>,
    },
    /// The keeper gave no reason (it was stopped).
    #[error("the lease on the job was lost")]
    Unexplained,
}

/// This run's hold on its job. Renewed in the background until it is
/// finished, released or dropped.
pub struct Lease {
    job: String,
    run_id: String,
    lost: CancellationToken,
    lost_reason: Arc<OnceLock<LeaseLost>>,
    keeper: JoinHandle<()>,
}

/// What [`acquire`] got.
pub struct Acquired {
    pub lease: Lease,
    /// The record of a run that died holding the job: what it sent must
    /// be read back before anything else.
    pub dead: Option<UnfinishedRun>,
    /// The run waited for another: the start offsets in its record were
    /// read before that wait and are refreshed.
    pub waited: bool,
}

/// The process a lease names: host (the pod, on Kubernetes) and pid.
pub fn owner() -> String {
    let host = crate::stage::replica_name(None).unwrap_or_else(|| "unknown-host".to_owned());
    format!("{host} (pid {})", std::process::id())
}

/// A run id no other run shares, even one started in the same millisecond.
pub fn run_id(job: &str, started_ms: i64) -> String {
    format!(
        "{job}-{started_ms}-{}-{:04x}",
        std::process::id(),
        fastrand::u16(..)
    )
}

/// Takes the job's lease for `record` (its run id, owner and start offsets),
/// waiting up to `wait` while a live run holds it.
pub async fn acquire(
    state: &StateStore,
    job: &str,
    record: &UnfinishedRun,
    duration: Duration,
    wait: Duration,
    shutdown: &CancellationToken,
) -> Result<Acquired, LeaseError> {
    let lease_ms = millis(duration);
    let deadline = Instant::now() + wait;
    let mut waited = false;
    loop {
        let now = now_ms();
        let mut mine = record.clone();
        mine.last_active_ms = now;
        mine.lease_until_ms = now.saturating_add(lease_ms);
        let holder = match state.acquire(job, &mine, now).await? {
            Acquire::Started => {
                return Ok(Acquired {
                    lease: Lease::keep(state.clone(), job, &mine.run_id, duration),
                    dead: None,
                    waited,
                })
            }
            Acquire::Lapsed(dead) => {
                let until = now.saturating_add(lease_ms);
                if state
                    .take_over(job, &dead, &mine.run_id, &mine.owner, now, until)
                    .await?
                {
                    tracing::info!(
                        job,
                        dead_run = %dead.run_id,
                        dead_owner = %dead.owner,
                        "took over the lease of a run that stopped renewing it"
                    );
                    return Ok(Acquired {
                        lease: Lease::keep(state.clone(), job, &mine.run_id, duration),
                        dead: Some(dead),
                        waited,
                    });
                }
                // Another run took it over first: look at the record again.
                continue;
            }
            Acquire::Held(holder) => holder,
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(LeaseError::Held(Box::new(holder)));
        }
        if !waited {
            tracing::info!(
                job,
                holder_run = %holder.run_id,
                holder_owner = %holder.owner,
                ?left,
                "another run holds the job; waiting for it"
            );
            waited = true;
        }
        tokio::select! {
            _ = tokio::time::sleep(left.min(WAIT_POLL)) => {}
            _ = shutdown.cancelled() => return Err(LeaseError::Interrupted),
        }
    }
}

impl Lease {
    fn keep(state: StateStore, job: &str, run_id: &str, duration: Duration) -> Lease {
        let lost = CancellationToken::new();
        let lost_reason = Arc::new(OnceLock::new());
        let keeper = tokio::spawn(renew_until_lost(
            state,
            job.to_owned(),
            run_id.to_owned(),
            duration,
            lost.clone(),
            lost_reason.clone(),
        ));
        Lease {
            job: job.to_owned(),
            run_id: run_id.to_owned(),
            lost,
            lost_reason,
            keeper,
        }
    }

    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// Cancelled once the lease cannot be trusted any more: the run must
    /// stop sending at once.
    pub fn lost(&self) -> &CancellationToken {
        &self.lost
    }

    pub fn lost_reason(&self) -> LeaseLost {
        self.lost_reason
            .get()
            .cloned()
            .unwrap_or(LeaseLost::Unexplained)
    }

    /// A failed run lets go at once; its record stays for the next run to
    /// read back from.
    pub async fn release(self, state: &StateStore) {
        self.keeper.abort();
        if let Err(e) = state.release(&self.job, &self.run_id, now_ms()).await {
            // It lapses on its own after `produce.lease`.
            tracing::warn!(job = %self.job, error = %e, "could not release the job's lease");
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

/// Renews the lease every third of its duration. A renewal that finds the
/// record gone to another run ends it, and so does a database that cannot
/// be reached until the lease would lapse before the next try.
async fn renew_until_lost(
    state: StateStore,
    job: String,
    run_id: String,
    duration: Duration,
    lost: CancellationToken,
    reason: Arc<OnceLock<LeaseLost>>,
) {
    let lease_ms = millis(duration);
    let every = duration / 3;
    let every_ms = millis(every);
    let mut renewed_at = now_ms();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let now = now_ms();
        match state
            .renew(&job, &run_id, now, now.saturating_add(lease_ms))
            .await
        {
            Ok(true) => renewed_at = now,
            Ok(false) => {
                let _ = reason.set(LeaseLost::TakenOver);
                break;
            }
            // The next try would come after the lease lapsed.
            Err(e) if now.saturating_add(every_ms) >= renewed_at.saturating_add(lease_ms) => {
                let _ = reason.set(LeaseLost::NotRenewed {
                    duration,
                    error: Arc::new(e),
                });
                break;
            }
            Err(e) => {
                tracing::warn!(job, error = %e, "could not renew the job's lease; retrying");
            }
        }
    }
    lost.cancel();
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_lease_says_why() {
        assert_eq!(
            LeaseLost::TakenOver.to_string(),
            "another run took over the job's lease (this run did not renew it in time)"
        );
        let not_renewed = LeaseLost::NotRenewed {
            duration: Duration::from_secs(90),
            error: Arc::new(StateError::Corrupt {
                job: "j".into(),
                reason: "bad offsets".into(),
            }),
        };
        assert_eq!(
            not_renewed.to_string(),
            "could not renew the job's lease for 1m 30s: state database: run record of job j \
             is unreadable: bad offsets"
        );
    }
}
