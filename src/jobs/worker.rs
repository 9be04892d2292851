//! The worker loop: claim a job, run it, repeat; sleep when the queue is empty (or
//! until a submission in this process wakes it). Runs inside the server (`--workers N`)
//! or alone (`graft worker`).

use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};

use serde_json::json;

use super::context::JobContext;
use super::keys::remove_checkpoints;
use super::run::run_job;

/// How long an idle worker waits before looking at the queue again.
pub const IDLE_POLL: Duration = Duration::from_millis(500);

/// Runs jobs until `shutdown` turns true; the job in hand is checkpointed at its next epoch
/// (or feature batch) and handed back to the queue, so another worker resumes it at once.
pub async fn worker_loop(ctx: JobContext, wake: std::sync::Arc<Notify>, mut shutdown: watch::Receiver<bool>) {
    tracing::info!(worker = %ctx.worker_id, "worker started");
    let lease_ms = ctx.lease.as_millis() as i64;
    let max_attempts = i64::from(ctx.max_attempts);
    // A lease only runs out once a lease period has passed: sweeping more often finds nothing.
    let mut next_sweep = Instant::now();
    while !*shutdown.borrow() {
        if Instant::now() >= next_sweep {
            fail_abandoned_jobs(&ctx, max_attempts).await;
            next_sweep = Instant::now() + ctx.lease;
        }
        match ctx.db.claim_job(&ctx.worker_id, lease_ms, max_attempts).await {
            Ok(Some(job)) => {
                tracing::info!(worker = %ctx.worker_id, job = %job.id, attempt = job.attempts, "job claimed");
                run_job(&ctx, job, shutdown.clone()).await;
            }
            Ok(None) => {
                tokio::select! {
                    () = wake.notified() => {}
                    () = tokio::time::sleep(IDLE_POLL) => {}
                    _ = shutdown.changed() => {}
                }
            }
            Err(e) => {
                tracing::warn!(worker = %ctx.worker_id, "claiming a job failed: {e}");
                tokio::time::sleep(IDLE_POLL * 4).await;
            }
        }
    }
    tracing::info!(worker = %ctx.worker_id, "worker stopped");
}

/// Ends the jobs whose workers died on every attempt, so a job that kills its worker
/// (for memory, say) cannot crash-loop the server after each restart.
async fn fail_abandoned_jobs(ctx: &JobContext, max_attempts: i64) {
    let failed = match ctx.db.fail_abandoned_jobs(max_attempts).await {
        Ok(failed) => failed,
        Err(e) => {
            tracing::warn!(worker = %ctx.worker_id, "looking for abandoned jobs failed: {e}");
            return;
        }
    };
    for job in failed {
        tracing::error!(job = %job.id, attempts = job.attempts, "job failed: its worker stopped on every attempt");
        remove_checkpoints(&ctx.blobs, &job.id);
        let _ = ctx.db.append_event(&job.id, "state", &json!({"state": "failed", "failure": job.failure})).await;
    }
}
