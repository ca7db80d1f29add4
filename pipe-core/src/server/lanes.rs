//! Lanes: each client's requests run one at a time, in arrival order, on the worker pool, while
//! clients run in parallel; a job runs its handler, then its error (if any) and `end`.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use super::subscriber::Wait;
use super::{Handler, Responder, Shared};
use crate::message::{Request, ToolError};
use crate::sync::lock;

/// One client's requests, run one at a time in arrival order.
#[derive(Default)]
pub(super) struct Lane {
    queue: VecDeque<Job>,
    running: bool,
}

pub(super) struct Job {
    pub(super) handler: Arc<Handler>,
    pub(super) request: Request,
    pub(super) responder: Responder,
}

impl Shared {
    /// Queues a job on its client's lane, starting the lane on a worker if it is idle.
    pub(super) fn submit(self: &Arc<Self>, job: Job) {
        let key = job.request.pid;
        let mut lanes = lock(&self.lanes);
        let lane = lanes.entry(key).or_default();
        lane.queue.push_back(job);
        if lane.running {
            return;
        }
        lane.running = true;
        drop(lanes);
        let shared = Arc::clone(self);
        self.pool.execute(move || shared.run_lane(key));
    }

    fn run_lane(&self, key: Option<u32>) {
        loop {
            let job = {
                let mut lanes = lock(&self.lanes);
                let Some(lane) = lanes.get_mut(&key) else {
                    return;
                };
                match lane.queue.pop_front() {
                    Some(job) => job,
                    None => {
                        lanes.remove(&key);
                        return;
                    }
                }
            };
            self.run_job(job);
        }
    }

    /// Runs a job to completion: handler, error event, `end`, bookkeeping.
    pub(super) fn run_job(&self, job: Job) {
        let Job {
            handler,
            request,
            responder,
        } = job;
        let outcome = match responder.check() {
            Err(interrupted) => Err(interrupted.into()),
            Ok(()) => catch_unwind(AssertUnwindSafe(|| handler(&request, &responder)))
                .unwrap_or_else(|panic| {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    tracing::error!(cmd = %request.cmd, "handler panicked: {what}");
                    Err(ToolError::internal(format!(
                        "{}: the handler crashed ({what}); the server is still running",
                        request.cmd
                    )))
                }),
        };
        if let Err(error) = outcome {
            tracing::debug!(cmd = %request.cmd, pid = ?request.pid, "request failed: {error}");
            let _ = responder.send(error.to_event(), Wait::Never);
        }
        // The request stops counting as in flight before its `end` goes out: a client that has
        // read the end may reuse the id at once (a new connection of the same process starts
        // its ids again).
        if let Some(pid) = request.pid {
            let mut inflight = lock(&self.inflight);
            if let Some(list) = inflight.get_mut(&pid) {
                list.retain(|f| !f.token.same(&responder.cancel));
                if list.is_empty() {
                    inflight.remove(&pid);
                }
            }
        }
        responder.finish();
    }

    /// Whether client `pid` has requests queued or running on its lane.
    pub(super) fn lane_busy(&self, pid: Option<u32>) -> bool {
        lock(&self.lanes).contains_key(&pid)
    }
}
