//! Work that a request starts and that outlives a quick answer is admitted against a
//! count: dataset ingestions (CPU and disk for minutes) and event streams (a connection
//! and a database poll each). Over the count the request is a 429 at once, before its
//! body is read, rather than a queue that grows without bound.

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
}

impl Admission {
    pub fn new(limits: &Limits) -> Self {
        Self {
            ingestions: Arc::new(Semaphore::new(limits.max_concurrent_ingestions)),
            max_ingestions: limits.max_concurrent_ingestions,
            event_streams: Arc::new(Semaphore::new(limits.max_event_streams)),
            max_event_streams: limits.max_event_streams,
        }
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
}
