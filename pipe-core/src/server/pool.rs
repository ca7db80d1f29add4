//! A cached thread pool: idle workers are reused, a new one is started when none is idle, so
//! a long-running handler never holds up a short one. Idle workers exit after a minute.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

type Task = Box<dyn FnOnce() + Send + 'static>;

const IDLE_EXIT: Duration = Duration::from_secs(60);

#[derive(Default)]
struct State {
    tasks: VecDeque<Task>,
    idle: usize,
    threads: usize,
}

#[derive(Default)]
struct Inner {
    state: Mutex<State>,
    work: Condvar,
}

/// The pool. Cloning shares it.
#[derive(Clone, Default)]
pub(crate) struct Pool(Arc<Inner>);

impl Pool {
    /// Runs `task` on an idle worker, or on a new one.
    pub(crate) fn execute(&self, task: impl FnOnce() + Send + 'static) {
        let mut state = self.0.state.lock().unwrap_or_else(|p| p.into_inner());
        state.tasks.push_back(Box::new(task));
        if state.idle >= state.tasks.len() {
            self.0.work.notify_one();
            return;
        }
        state.threads += 1;
        let n = state.threads;
        drop(state);
        let inner = Arc::clone(&self.0);
        let spawned = std::thread::Builder::new()
            .name(format!("cpipe-worker-{n}"))
            .spawn(move || worker(&inner));
        if let Err(e) = spawned {
            // The queued task runs when a busy worker frees up.
            tracing::error!("cannot start a worker thread: {e}");
            self.0
                .state
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .threads -= 1;
        }
    }
}

fn worker(inner: &Inner) {
    let mut state = inner.state.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        if let Some(task) = state.tasks.pop_front() {
            drop(state);
            task();
            state = inner.state.lock().unwrap_or_else(|p| p.into_inner());
            continue;
        }
        state.idle += 1;
        let (next, timeout) = inner
            .work
            .wait_timeout(state, IDLE_EXIT)
            .unwrap_or_else(|p| p.into_inner());
        state = next;
        state.idle -= 1;
        if timeout.timed_out() && state.tasks.is_empty() {
            state.threads -= 1;
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn a_blocked_task_does_not_hold_up_others() {
        let pool = Pool::default();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let (done_tx, done_rx) = mpsc::channel();
        pool.execute(move || {
            let _ = release_rx.recv();
        });
        for i in 0..20 {
            let done = done_tx.clone();
            pool.execute(move || done.send(i).unwrap());
        }
        let mut got: Vec<i32> = (0..20)
            .map(|_| done_rx.recv_timeout(Duration::from_secs(5)).unwrap())
            .collect();
        got.sort();
        assert_eq!(got, (0..20).collect::<Vec<_>>());
        release_tx.send(()).unwrap();
    }
}
