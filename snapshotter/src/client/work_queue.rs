//! The background-worker machinery that read-ahead ([`crate::client::readahead`]) and
//! startup prefetch ([`crate::client::startup`]) share: a queue of jobs under one lock,
//! worker threads that take jobs from it until it is stopped, and stopping (queued jobs
//! dropped, jobs in progress finished, workers joined).
//!
//! What a job is, how jobs are queued (front or back, bounded how) and what the workers do
//! with them stay with each user; so does the `seen` set each keeps beside its jobs, under
//! the same lock.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

/// What the lock guards: queued jobs of type `J`, the user's `seen` state `S`, and whether
/// the queue is stopping.
pub(crate) struct Queue<J, S> {
    /// Jobs waiting for a worker, taken from the front.
    pub(crate) jobs: VecDeque<J>,
    /// The user's record of what was queued before.
    pub(crate) seen: S,
    stopping: bool,
}

impl<J, S> Queue<J, S> {
    /// Whether the queue is being stopped (workers return).
    pub(crate) fn stopping(&self) -> bool {
        self.stopping
    }
}

/// A job queue shared by worker threads: the locked [`Queue`] and the condition variable
/// that wakes a worker when a job is queued or the queue stops.
pub(crate) struct JobQueue<J, S> {
    queue: Mutex<Queue<J, S>>,
    wake: Condvar,
}

impl<J, S> JobQueue<J, S> {
    /// An empty queue with `seen` as its initial seen state.
    pub(crate) fn new(seen: S) -> Self {
        JobQueue {
            queue: Mutex::new(Queue {
                jobs: VecDeque::new(),
                seen,
                stopping: false,
            }),
            wake: Condvar::new(),
        }
    }

    /// Locks the queue (a poisoned lock is taken over: the queue stays consistent).
    pub(crate) fn lock(&self) -> MutexGuard<'_, Queue<J, S>> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Wakes one worker (after a job was queued).
    pub(crate) fn notify_one(&self) {
        self.wake.notify_one();
    }

    /// For a worker: waits for the next job and takes it; `None` once the queue stops.
    pub(crate) fn next(&self) -> Option<J> {
        let mut queue = self.lock();
        loop {
            if queue.stopping {
                return None;
            }
            if let Some(job) = queue.jobs.pop_front() {
                return Some(job);
            }
            queue = self
                .wake
                .wait(queue)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Stops the queue: queued jobs are dropped and every worker is woken to return.
    fn stop(&self) {
        {
            let mut queue = self.lock();
            queue.stopping = true;
            queue.jobs.clear();
        }
        self.wake.notify_all();
    }
}

/// The worker threads of one job queue.
pub(crate) struct Workers {
    handles: Vec<JoinHandle<()>>,
    stopped: bool,
}

impl Workers {
    /// Spawns `count` threads named `{name}-{i}`, each running `work(&shared)` (which
    /// returns once the queue stops).
    ///
    /// # Errors
    /// A thread cannot be spawned.
    pub(crate) fn spawn<T: Send + Sync + 'static>(
        count: usize,
        name: &str,
        shared: &Arc<T>,
        work: fn(&T),
    ) -> std::io::Result<Workers> {
        let mut handles = Vec::with_capacity(count);
        for i in 0..count {
            let shared = shared.clone();
            handles.push(
                std::thread::Builder::new()
                    .name(format!("{name}-{i}"))
                    .spawn(move || work(&shared))?,
            );
        }
        Ok(Workers {
            handles,
            stopped: false,
        })
    }

    /// Stops `queue` (queued jobs dropped) and joins the workers (jobs in progress finish);
    /// once only, later calls do nothing.
    pub(crate) fn stop<J, S>(&mut self, queue: &JobQueue<J, S>) {
        if std::mem::replace(&mut self.stopped, true) {
            return;
        }
        queue.stop();
        for worker in self.handles.drain(..) {
            let _ = worker.join();
        }
    }
}
