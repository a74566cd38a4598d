//! The inference worker: one thread that runs the model, off the async threads. Requests that
//! queue up while a forward pass runs are taken together, up to `max_batch`, and go through
//! the model in one pass (no waiting is added: a lone request runs at once). The queue is
//! bounded by the bytes of pixels waiting in it ([`QueueBudget`]), not by a count of jobs, so
//! large model inputs cannot pile up more memory than configured.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::time::Instant;

use anyhow::{Result, anyhow};
use tokio::sync::oneshot;

use super::prometheus::Metrics;
use super::snapshot::Loaded;

/// The bytes of pixels queued for the model, against a limit.
#[derive(Debug)]
pub struct QueueBudget {
    limit: usize,
    used: AtomicUsize,
}

/// Bytes taken from a [`QueueBudget`], given back when dropped.
#[derive(Debug)]
pub struct Reserved {
    budget: Arc<QueueBudget>,
    bytes: usize,
}

impl Drop for Reserved {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

impl QueueBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            used: AtomicUsize::new(0),
        })
    }

    /// Takes `bytes` if they fit under the limit. An empty queue always takes one job, so a
    /// model input larger than the whole budget is still served (alone).
    pub fn reserve(self: &Arc<Self>, bytes: usize) -> Option<Reserved> {
        let mut used = self.used.load(Ordering::Acquire);
        loop {
            if used > 0 && used.saturating_add(bytes) > self.limit {
                return None;
            }
            match self.used.compare_exchange_weak(
                used,
                used + bytes,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    return Some(Reserved {
                        budget: self.clone(),
                        bytes,
                    });
                }
                Err(now) => used = now,
            }
        }
    }

    /// Bytes taken now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

/// One preprocessed image waiting for the model.
struct Job {
    model: Arc<Loaded>,
    pixels: Vec<u8>,
    reply: oneshot::Sender<Result<Vec<f32>, String>>,
    /// Its share of the queue budget, given back when the job is answered (dropped).
    _reserved: Reserved,
}

/// A handle to send images to the worker thread.
#[derive(Clone)]
pub struct Worker {
    tx: Sender<Job>,
    budget: Arc<QueueBudget>,
}

impl Worker {
    /// Starts the worker thread, with at most `max_queue_bytes` of pixels waiting for it. It
    /// ends when every handle is dropped.
    pub fn start(max_batch: usize, max_queue_bytes: usize, metrics: Arc<Metrics>) -> Self {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("flora-infer".into())
            .spawn(move || run(rx, max_batch.max(1), &metrics))
            .expect("spawning the inference worker");
        Self {
            tx,
            budget: QueueBudget::new(max_queue_bytes),
        }
    }

    /// Class probabilities of one preprocessed image (RGB8, the model's size).
    pub async fn predict(&self, model: Arc<Loaded>, pixels: Vec<u8>) -> Result<Vec<f32>> {
        let Some(reserved) = self.budget.reserve(pixels.len()) else {
            return Err(anyhow!(
                "the inference queue is full ({} bytes of images wait for the model, \
                 serve.max_queue_bytes = {}): retry later",
                self.budget.used(),
                self.budget.limit
            ));
        };
        let (reply, rx) = oneshot::channel();
        if self
            .tx
            .send(Job {
                model,
                pixels,
                reply,
                _reserved: reserved,
            })
            .is_err()
        {
            return Err(anyhow!("the inference worker stopped"));
        }
        rx.await
            .map_err(|_| anyhow!("the inference worker dropped the request"))?
            .map_err(|e| anyhow!(e))
    }
}

fn run(rx: Receiver<Job>, max_batch: usize, metrics: &Metrics) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while jobs.len() < max_batch {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        // Jobs for different models (a switch in between) go in separate passes.
        while !jobs.is_empty() {
            let model = jobs[0].model.clone();
            let (same, rest): (Vec<Job>, Vec<Job>) = jobs
                .into_iter()
                .partition(|j| Arc::ptr_eq(&j.model, &model));
            jobs = rest;
            infer(&model, same, metrics);
        }
    }
}

fn infer(model: &Loaded, jobs: Vec<Job>, metrics: &Metrics) {
    let start = Instant::now();
    let images: Vec<&[u8]> = jobs.iter().map(|j| j.pixels.as_slice()).collect();
    let result =
        std::panic::catch_unwind(AssertUnwindSafe(|| model.bundle.predict_pixels(&images)));
    match result {
        Ok(probs) if probs.len() == jobs.len() => {
            metrics.inference(jobs.len(), start.elapsed());
            for (job, p) in jobs.into_iter().zip(probs) {
                let _ = job.reply.send(Ok(p));
            }
        }
        _ => {
            metrics.failure("inference");
            for job in jobs {
                let _ = job.reply.send(Err("the model failed on this input".into()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_is_bounded_by_bytes() {
        let budget = QueueBudget::new(100);
        let a = budget.reserve(60).expect("fits");
        assert!(budget.reserve(50).is_none(), "60 + 50 > 100");
        let b = budget.reserve(40).expect("60 + 40 fits");
        assert_eq!(budget.used(), 100);
        drop(a);
        assert_eq!(budget.used(), 40);
        let c = budget
            .reserve(60)
            .expect("fits again once a job is answered");
        drop((b, c));
        assert_eq!(budget.used(), 0);
        // One job larger than the whole budget runs alone, never beside another.
        let big = budget.reserve(1000).expect("an empty queue takes one job");
        assert!(budget.reserve(1).is_none());
        drop(big);
        assert!(budget.reserve(1).is_some());
    }
}
