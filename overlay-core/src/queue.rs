//! A keyed work queue: bounded concurrency, at most one run per key at a
//! time (a key queued while it runs runs once more afterwards), delayed
//! requeues and per-key exponential backoff.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};

use crate::backoff::Backoff;

/// What a run asks the queue to do next with its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Done until something changes.
    Done,
    /// Run again after this delay.
    After(Duration),
    /// Failed; retry with exponential backoff.
    Backoff,
}

struct State<K> {
    queue: VecDeque<K>,
    queued: HashSet<K>,
    running: HashSet<K>,
    dirty: HashSet<K>,
    failures: HashMap<K, u32>,
}

struct Inner<K> {
    state: Mutex<State<K>>,
    notify: Notify,
    permits: Arc<Semaphore>,
    backoff: Backoff,
}

/// The queue. Cheap to clone; clones share the queue.
pub struct WorkQueue<K> {
    inner: Arc<Inner<K>>,
}

impl<K> Clone for WorkQueue<K> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<K: Clone + Eq + Hash + Send + Sync + 'static> WorkQueue<K> {
    /// A queue running at most `concurrency` keys at once.
    pub fn new(concurrency: usize, backoff: Backoff) -> Self {
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    queue: VecDeque::new(),
                    queued: HashSet::new(),
                    running: HashSet::new(),
                    dirty: HashSet::new(),
                    failures: HashMap::new(),
                }),
                notify: Notify::new(),
                permits: Arc::new(Semaphore::new(concurrency.max(1))),
                backoff,
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State<K>> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `key` (no-op when already queued; marks it for one more run
    /// when it is running).
    pub fn add(&self, key: K) {
        let mut s = self.state();
        if s.running.contains(&key) {
            s.dirty.insert(key);
        } else if s.queued.insert(key.clone()) {
            s.queue.push_back(key);
            drop(s);
            self.inner.notify.notify_one();
        }
    }

    /// Queues `key` after `delay`.
    pub fn add_after(&self, key: K, delay: Duration) {
        let q = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            q.add(key);
        });
    }

    /// Number of keys queued or running.
    pub fn len(&self) -> usize {
        let s = self.state();
        s.queued.len() + s.running.len()
    }

    /// True when nothing is queued or running.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Runs keys through `work` until the returned future is dropped.
    /// Dropping it also cancels the runs in flight (at their next await),
    /// so that nothing started under one leadership term continues after
    /// it.
    pub async fn run<F, Fut>(&self, work: F)
    where
        F: Fn(K) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Next> + Send + 'static,
    {
        let work = Arc::new(work);
        let mut in_flight = tokio::task::JoinSet::new();
        loop {
            while in_flight.try_join_next().is_some() {}
            let key = loop {
                let next = {
                    let mut s = self.state();
                    let k = s.queue.pop_front();
                    if let Some(k) = &k {
                        s.queued.remove(k);
                        s.running.insert(k.clone());
                    }
                    k
                };
                match next {
                    Some(k) => break k,
                    None => self.inner.notify.notified().await,
                }
            };
            let Ok(permit) = self.inner.permits.clone().acquire_owned().await else {
                return;
            };
            let q = self.clone();
            let work = work.clone();
            in_flight.spawn(async move {
                let next = work(key.clone()).await;
                drop(permit);
                q.finish(key, next);
            });
        }
    }

    fn finish(&self, key: K, next: Next) {
        let (again, delay) = {
            let mut s = self.state();
            s.running.remove(&key);
            let again = s.dirty.remove(&key);
            let delay = match next {
                Next::Done => {
                    s.failures.remove(&key);
                    None
                }
                Next::After(d) => {
                    s.failures.remove(&key);
                    Some(d)
                }
                Next::Backoff => {
                    let n = s.failures.entry(key.clone()).or_insert(0);
                    *n = n.saturating_add(1);
                    Some(self.inner.backoff.delay(*n))
                }
            };
            (again, delay)
        };
        if again {
            self.add(key);
        } else if let Some(d) = delay {
            self.add_after(key, d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let b = Backoff {
            min: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        assert_eq!(b.delay(1), Duration::from_millis(100));
        assert_eq!(b.delay(2), Duration::from_millis(200));
        assert_eq!(b.delay(4), Duration::from_millis(800));
        assert_eq!(b.delay(5), Duration::from_secs(1));
        assert_eq!(b.delay(200), Duration::from_secs(1));
    }

    #[tokio::test]
    async fn one_run_per_key_at_a_time_and_bounded_concurrency() {
        let q = WorkQueue::new(4, Backoff::default());
        let running = Arc::new(Mutex::new(HashSet::new()));
        let peak = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(AtomicUsize::new(0));
        for i in 0..40 {
            q.add(i % 10);
        }
        let (r, p, d) = (running.clone(), peak.clone(), done.clone());
        let runner = q.clone();
        let h = tokio::spawn(async move {
            runner
                .run(move |k: i32| {
                    let (r, p, d) = (r.clone(), p.clone(), d.clone());
                    async move {
                        {
                            let mut set = r.lock().unwrap();
                            assert!(set.insert(k), "key {k} ran twice at once");
                            p.fetch_max(set.len(), Ordering::SeqCst);
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        r.lock().unwrap().remove(&k);
                        d.fetch_add(1, Ordering::SeqCst);
                        Next::Done
                    }
                })
                .await
        });
        while !q.is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        h.abort();
        // Duplicates of a queued key collapse into one run.
        assert_eq!(done.load(Ordering::SeqCst), 10);
        assert!(peak.load(Ordering::SeqCst) <= 4);
    }

    #[tokio::test]
    async fn a_key_added_while_running_runs_again() {
        let q = WorkQueue::new(2, Backoff::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let (r, qq) = (runs.clone(), q.clone());
        q.add("n1");
        let runner = q.clone();
        let h = tokio::spawn(async move {
            runner
                .run(move |k: &'static str| {
                    let (r, qq) = (r.clone(), qq.clone());
                    async move {
                        if r.fetch_add(1, Ordering::SeqCst) == 0 {
                            qq.add(k); // an event arrives mid-run
                        }
                        Next::Done
                    }
                })
                .await
        });
        while runs.load(Ordering::SeqCst) < 2 || !q.is_empty() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        h.abort();
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn stopping_the_runner_cancels_runs_in_flight() {
        let q: WorkQueue<u32> = WorkQueue::new(4, Backoff::default());
        let started = Arc::new(tokio::sync::Notify::new());
        let finished = Arc::new(AtomicUsize::new(0));
        let (s, f) = (started.clone(), finished.clone());
        let runner = tokio::spawn({
            let q = q.clone();
            async move {
                q.run(move |_| {
                    let (s, f) = (s.clone(), f.clone());
                    async move {
                        s.notify_one();
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        f.fetch_add(1, Ordering::SeqCst);
                        Next::Done
                    }
                })
                .await
            }
        });
        q.add(1);
        started.notified().await;
        runner.abort();
        let _ = runner.await;
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(
            finished.load(Ordering::SeqCst),
            0,
            "a run in flight completed after the runner stopped"
        );
    }
}
