//! The phases before a run emits anything: recover (read back what a run
//! that died holding the job sent, into the ledger) and open the run (take
//! the job's lease, with the topic's end offsets a later run recovers
//! from).

use std::time::Duration;

use super::super::lease::{self, Lease, LeaseError};
use super::super::row::format_rfc3339;
use super::super::state::UnfinishedRun;
use super::readback::{end_offsets, read_back};
use super::{CompiledJob, RunContext, RunError};
use crate::clock::now_ms;
use crate::produce::ProduceError;

/// The job's lease, and how many events of a dead run were recovered.
pub struct OpenRun {
    pub lease: Lease,
    pub recovered: u64,
}

impl CompiledJob {
    /// Takes the job's lease. A run that died holding it is finished first:
    /// what it sent is read back into the ledger.
    pub(super) async fn open_run(
        &self,
        cx: &RunContext<'_>,
        run_started_ms: i64,
    ) -> Result<OpenRun, ProduceError> {
        let job = self.name.as_str();
        let record = UnfinishedRun {
            run_id: lease::run_id(job, run_started_ms),
            owner: cx.owner.to_owned(),
            topic: self.topic.clone(),
            start_offsets: end_offsets(cx.readback, &self.topic)
                .await
                .map_err(|e| self.failed(e.into()))?,
            started_at_ms: run_started_ms,
            last_active_ms: run_started_ms,
            lease_until_ms: run_started_ms,
        };
        let acquired = lease::acquire(
            cx.state,
            job,
            &record,
            cx.lease,
            cx.wait_for_lease,
            cx.shutdown,
        )
        .await
        .map_err(|e| self.lease_refused(e))?;
        let lease = acquired.lease;
        let recovered = match &acquired.dead {
            Some(dead) => self.recover(cx, dead).await,
            None => Ok(0),
        };
        let refreshed = match recovered {
            Ok(count) if acquired.dead.is_some() || acquired.waited => self
                .refresh_start(cx, &lease, run_started_ms)
                .await
                .map(|()| count),
            other => other,
        };
        match refreshed {
            Ok(recovered) => Ok(OpenRun { lease, recovered }),
            Err(e) => {
                lease.release(cx.state).await;
                Err(e)
            }
        }
    }

    fn lease_refused(&self, error: LeaseError) -> ProduceError {
        match error {
            LeaseError::Held(holder) => ProduceError::LeaseHeld {
                job: self.name.clone(),
                run_id: holder.run_id,
                owner: holder.owner,
                alive_ago_s: (now_ms() - holder.last_active_ms).max(0) / 1000,
                lease_until: format_rfc3339(holder.lease_until_ms * 1000),
            },
            LeaseError::Interrupted => self.failed(RunError::LeaseInterrupted),
            LeaseError::State(e) => e.into(),
        }
    }

    /// Reads back what a dead run sent and records it in the ledger.
    async fn recover(
        &self,
        cx: &RunContext<'_>,
        dead: &UnfinishedRun,
    ) -> Result<u64, ProduceError> {
        let job = self.name.as_str();
        // Records the dead run had in flight may still be landing (and
        // replicating): let them settle, or the read-back misses them and
        // they are emitted twice. A lapsed lease usually means this has
        // long passed; a run that failed and let go is another matter.
        let quiet_ms = now_ms() - dead.last_active_ms;
        let settle_ms = i64::try_from(cx.recovery_settle.as_millis()).unwrap_or(i64::MAX);
        if quiet_ms < settle_ms {
            let wait = Duration::from_millis((settle_ms - quiet_ms) as u64);
            tracing::info!(
                job,
                ?wait,
                "the run this one takes over was active moments ago; waiting before reading back"
            );
            tokio::time::sleep(wait).await;
        }
        let found = read_back(cx.readback, dead, job)
            .await
            .map_err(|e| self.failed(e.into()))?;
        tracing::info!(
            job,
            run_id = %dead.run_id,
            events = found.len(),
            "recovered the events an unfinished run sent"
        );
        cx.state.mark_emitted(job, &found, now_ms()).await?;
        Ok(found.len() as u64)
    }

    /// This run's own start offsets, read now: after a read-back or a wait,
    /// those read before are stale.
    async fn refresh_start(
        &self,
        cx: &RunContext<'_>,
        lease: &Lease,
        run_started_ms: i64,
    ) -> Result<(), ProduceError> {
        let job = self.name.as_str();
        let offsets = end_offsets(cx.readback, &self.topic)
            .await
            .map_err(|e| self.failed(e.into()))?;
        let ours = cx
            .state
            .restart_run(job, lease.run_id(), &self.topic, &offsets, run_started_ms)
            .await?;
        if !ours {
            return Err(self.failed(RunError::LeaseLost(lease.lost_reason())));
        }
        Ok(())
    }
}
