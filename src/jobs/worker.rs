//! The worker loop: claim a job, run it, repeat; sleep when the queue is empty (or
//! until a submission in this process wakes it). Runs inside the server (`--workers N`)
//! or alone (`graft worker`).

use std::time::Duration;

use tokio::sync::{Notify, watch};

use super::run::{JobContext, run_job};

/// How long an idle worker waits before looking at the queue again.
pub const IDLE_POLL: Duration = Duration::from_millis(500);

/// Runs jobs until `shutdown` turns true; the job in hand is finished first.
pub async fn worker_loop(ctx: JobContext, wake: std::sync::Arc<Notify>, mut shutdown: watch::Receiver<bool>) {
    tracing::info!(worker = %ctx.worker_id, "worker started");
    let lease_ms = ctx.lease.as_millis() as i64;
    while !*shutdown.borrow() {
        match ctx.db.claim_job(&ctx.worker_id, lease_ms).await {
            Ok(Some(job)) => {
                tracing::info!(worker = %ctx.worker_id, job = %job.id, attempt = job.attempts, "job claimed");
                run_job(&ctx, job).await;
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
