//! Work that a request starts and that outlives a quick answer is admitted against a
//! count: dataset ingestions (CPU and disk for minutes), event streams (a connection and
//! a database poll each), ONNX exports (a model built in memory), and the bytes of
//! inference bodies being read and decoded. Over the count the request is a 429 at once,
//! before its body is read, rather than a queue that grows without bound.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::Limits;
use crate::error::Error;

#[derive(Clone)]
pub struct Admission {
    ingestions: Arc<Semaphore>,
    max_ingestions: usize,
    event_streams: Arc<Semaphore>,
    max_event_streams: usize,
    exports: Arc<Semaphore>,
    max_exports: usize,
    /// In KiB, so that a permit count fits the semaphore's `u32` requests.
    inference_kib: Arc<Semaphore>,
    max_inference_bytes: usize,
}

impl Admission {
    pub fn new(limits: &Limits) -> Self {
        Self {
            ingestions: Arc::new(Semaphore::new(limits.max_concurrent_ingestions)),
            max_ingestions: limits.max_concurrent_ingestions,
            event_streams: Arc::new(Semaphore::new(limits.max_event_streams)),
            max_event_streams: limits.max_event_streams,
            exports: Arc::new(Semaphore::new(limits.max_concurrent_exports)),
            max_exports: limits.max_concurrent_exports,
            inference_kib: Arc::new(Semaphore::new(limits.max_inference_bytes_in_flight.div_ceil(1024))),
            max_inference_bytes: limits.max_inference_bytes_in_flight,
        }
    }

    /// Room for an inference body of `bytes`, held while it is read, decoded and run.
    pub fn inference(&self, bytes: usize) -> Result<OwnedSemaphorePermit, Error> {
        let kib = u32::try_from(bytes.div_ceil(1024).max(1)).unwrap_or(u32::MAX);
        self.inference_kib.clone().try_acquire_many_owned(kib).map_err(|_| {
            Error::Overloaded(format!(
                "images of {} bytes in all are being read or decoded, the most at once \
                 (--max-inference-bytes-in-flight); try again shortly",
                self.max_inference_bytes
            ))
        })
    }

    /// A place for one ONNX export, held while it is built and sent.
    pub fn export(&self) -> Result<OwnedSemaphorePermit, Error> {
        self.exports.clone().try_acquire_owned().map_err(|_| {
            Error::Overloaded(format!(
                "{} ONNX exports are being built, the most at once (--max-concurrent-exports); try again shortly",
                self.max_exports
            ))
        })
    }

    /// A place for one dataset ingestion, held until it ends.
    pub fn ingestion(&self) -> Result<OwnedSemaphorePermit, Error> {
        self.ingestions.clone().try_acquire_owned().map_err(|_| {
            Error::Overloaded(format!(
                "{} dataset uploads are being ingested, the most at once (--max-concurrent-ingestions); try again shortly",
                self.max_ingestions
            ))
        })
    }

    /// A place for one event stream, held until the stream ends.
    pub fn event_stream(&self) -> Result<OwnedSemaphorePermit, Error> {
        self.event_streams.clone().try_acquire_owned().map_err(|_| {
            Error::Overloaded(format!(
                "{} event streams are open, the most at once (--max-event-streams); poll GET /v1/jobs/{{id}} instead",
                self.max_event_streams
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_counted_and_given_back() {
        let limits = Limits { max_concurrent_ingestions: 2, max_event_streams: 1, ..Limits::default() };
        let admission = Admission::new(&limits);
        let (first, _second) = (admission.ingestion().unwrap(), admission.ingestion().unwrap());
        let refused = admission.ingestion().unwrap_err();
        assert!(refused.to_string().contains("2 dataset uploads"), "{refused}");
        drop(first);
        assert!(admission.ingestion().is_ok());
        let stream = admission.event_stream().unwrap();
        assert!(admission.event_stream().is_err());
        drop(stream);
        assert!(admission.event_stream().is_ok());
    }

    #[test]
    fn inference_bytes_are_counted_by_size() {
        let limits =
            Limits { max_inference_bytes_in_flight: 10 * 1024, max_concurrent_exports: 1, ..Limits::default() };
        let admission = Admission::new(&limits);
        let big = admission.inference(6 * 1024).unwrap();
        let small = admission.inference(4 * 1024).unwrap();
        assert!(admission.inference(1).is_err(), "full");
        drop(small);
        assert!(admission.inference(4 * 1024).is_ok());
        assert!(admission.inference(5 * 1024).is_err());
        drop(big);
        assert!(admission.inference(usize::MAX).is_err(), "larger than the whole budget");
        let export = admission.export().unwrap();
        assert!(admission.export().is_err());
        drop(export);
        assert!(admission.export().is_ok());
    }
}
