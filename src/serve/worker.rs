//! The inference worker: one thread that runs the model, off the async threads. Requests that
//! queue up while a forward pass runs are taken together, up to `max_batch`, and go through
//! the model in one pass (no waiting is added: a lone request runs at once).

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::time::Instant;

use anyhow::{Result, anyhow};
use tokio::sync::oneshot;

use super::metrics::Metrics;
use super::models::Loaded;

/// One preprocessed image waiting for the model.
struct Job {
    model: Arc<Loaded>,
    pixels: Vec<u8>,
    reply: oneshot::Sender<Result<Vec<f32>, String>>,
}

/// A handle to send images to the worker thread.
#[derive(Clone)]
pub struct Worker {
    tx: SyncSender<Job>,
}

/// Most jobs waiting for the worker; past it requests get 503.
const QUEUE: usize = 4096;

impl Worker {
    /// Starts the worker thread. It ends when every handle is dropped.
    pub fn start(max_batch: usize, metrics: Arc<Metrics>) -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("flora-infer".into())
            .spawn(move || run(rx, max_batch.max(1), &metrics))
            .expect("spawning the inference worker");
        Self { tx }
    }

    /// Class probabilities of one preprocessed image (RGB8, the model's size).
    pub async fn predict(&self, model: Arc<Loaded>, pixels: Vec<u8>) -> Result<Vec<f32>> {
        let (reply, rx) = oneshot::channel();
        match self.tx.try_send(Job {
            model,
            pixels,
            reply,
        }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(anyhow!("the inference queue is full")),
            Err(TrySendError::Disconnected(_)) => {
                return Err(anyhow!("the inference worker stopped"));
            }
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
