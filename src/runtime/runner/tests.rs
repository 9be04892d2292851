//! The batcher's rules with a fake executor whose batches the test releases one by one:
//! arrival order, each request gets its own images' outputs, requests larger than a
//! batch are split, a request that does not fit opens the next batch, a full queue is
//! refused, a departed client's images are never computed, and dropping the runner
//! still answers everything queued.

use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;

/// Each image is one number; its output is that number × 10.
struct Fake {
    batches: Arc<Mutex<Vec<Vec<f32>>>>,
    started: Sender<()>,
    permits: Receiver<()>,
}

impl BatchExecutor for Fake {
    fn run(&mut self, pixels: Vec<f32>, count: usize) -> Reply {
        assert_eq!(pixels.len(), count);
        let _ = self.started.send(());
        let _ = self.permits.recv();
        self.batches.lock().unwrap().push(pixels.clone());
        Ok(pixels.into_iter().map(|v| vec![vec![v * 10.0]]).collect())
    }
}

struct Harness {
    runner: ModelRunner,
    batches: Arc<Mutex<Vec<Vec<f32>>>>,
    started: Receiver<()>,
    permits: Sender<()>,
}

fn harness(max_batch_size: usize, queue_capacity: usize, max_delay: Duration) -> Harness {
    let batches = Arc::new(Mutex::new(Vec::new()));
    let (started_tx, started) = channel();
    let (permits, permits_rx) = channel();
    let config = RunnerConfig {
        input_name: "x".into(),
        output_names: vec!["y".into()],
        image_dims: [1, 1, 1],
        max_batch_size,
        max_delay,
        queue_capacity,
    };
    let fake = Fake { batches: batches.clone(), started: started_tx, permits: permits_rx };
    Harness { runner: ModelRunner::spawn_with("fake", fake, config).unwrap(), batches, started, permits }
}

impl Harness {
    /// Submits a one-image request and waits until the executor is busy with it, so that
    /// what the test submits next queues up behind it.
    fn occupy(&self) -> oneshot::Receiver<Reply> {
        let reply = self.runner.submit(vec![0.0], 1).unwrap();
        self.started.recv_timeout(Duration::from_secs(5)).expect("the executor took the first request");
        reply
    }

    fn release(&self, batches: usize) {
        for _ in 0..batches {
            self.permits.send(()).unwrap();
        }
    }

    fn batches(&self) -> Vec<Vec<f32>> {
        self.batches.lock().unwrap().clone()
    }
}

fn outputs(reply: oneshot::Receiver<Reply>) -> Vec<f32> {
    reply.blocking_recv().unwrap().unwrap().into_iter().map(|image| image[0][0]).collect()
}

#[test]
fn batches_keep_arrival_order_and_answer_each_request_with_its_own_images() {
    let h = harness(4, 16, Duration::ZERO);
    let first = h.occupy();
    let a = h.runner.submit(vec![1.0, 2.0, 3.0], 3).unwrap();
    let b = h.runner.submit(vec![4.0], 1).unwrap();
    let c = h.runner.submit(vec![5.0, 6.0], 2).unwrap();
    h.release(3);
    assert_eq!(outputs(first), [0.0]);
    assert_eq!(outputs(a), [10.0, 20.0, 30.0]);
    assert_eq!(outputs(b), [40.0]);
    assert_eq!(outputs(c), [50.0, 60.0]);
    // A and B fill a batch of 4; C (2 images) does not fit and opens the next one.
    assert_eq!(h.batches(), [vec![0.0], vec![1.0, 2.0, 3.0, 4.0], vec![5.0, 6.0]]);
}

#[test]
fn a_request_that_does_not_fit_waits_its_turn_instead_of_being_overtaken() {
    let h = harness(4, 16, Duration::ZERO);
    let first = h.occupy();
    let a = h.runner.submit(vec![1.0, 2.0], 2).unwrap();
    let big = h.runner.submit(vec![3.0, 4.0, 5.0], 3).unwrap();
    let small = h.runner.submit(vec![6.0], 1).unwrap();
    h.release(4);
    for reply in [first, a, big, small] {
        outputs(reply);
    }
    // `small` would fit beside `a`, but `big` came first: fairness over packing.
    assert_eq!(h.batches(), [vec![0.0], vec![1.0, 2.0], vec![3.0, 4.0, 5.0, 6.0]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_requests_are_split_into_batches_and_reassembled_in_order() {
    let h = harness(2, 16, Duration::ZERO);
    h.release(16);
    let values: Vec<f32> = (1..=5).map(|v| v as f32).collect();
    let out = h.runner.infer_all(values, 5).await.unwrap();
    assert_eq!(out.iter().map(|image| image[0][0]).collect::<Vec<_>>(), [10.0, 20.0, 30.0, 40.0, 50.0]);
    assert!(h.batches().iter().all(|batch| batch.len() <= 2), "{:?}", h.batches());
    assert_eq!(h.batches().concat().len(), 5);
}

#[test]
fn a_full_queue_is_refused_at_once() {
    let h = harness(1, 2, Duration::ZERO);
    let first = h.occupy();
    let queued: Vec<_> = (1..=2).map(|i| h.runner.submit(vec![i as f32], 1).unwrap()).collect();
    assert_eq!(h.runner.submit(vec![9.0], 1).unwrap_err(), InferenceError::Overloaded);
    h.release(3);
    outputs(first);
    for reply in queued {
        outputs(reply);
    }
    // Room again once the queue drained.
    let again = h.runner.submit(vec![7.0], 1).unwrap();
    h.release(1);
    assert_eq!(outputs(again), [70.0]);
}

#[test]
fn images_of_a_departed_client_are_never_computed() {
    let h = harness(4, 16, Duration::ZERO);
    let first = h.occupy();
    let gone = h.runner.submit(vec![1.0, 2.0], 2).unwrap();
    drop(gone);
    let kept = h.runner.submit(vec![3.0], 1).unwrap();
    h.release(2);
    outputs(first);
    assert_eq!(outputs(kept), [30.0]);
    assert_eq!(h.batches(), [vec![0.0], vec![3.0]]);
}

#[test]
fn dropping_the_runner_still_answers_what_was_queued() {
    let h = harness(1, 16, Duration::ZERO);
    let first = h.occupy();
    let queued: Vec<_> = (1..=3).map(|i| h.runner.submit(vec![i as f32], 1).unwrap()).collect();
    let Harness { runner, permits, batches, .. } = h;
    drop(runner);
    for _ in 0..4 {
        permits.send(()).unwrap();
    }
    assert_eq!(outputs(first), [0.0]);
    let answers: Vec<Vec<f32>> = queued.into_iter().map(outputs).collect();
    assert_eq!(answers, [vec![10.0], vec![20.0], vec![30.0]]);
    assert_eq!(batches.lock().unwrap().len(), 4);
}

#[test]
fn a_batching_delay_gathers_requests_that_arrive_close_together() {
    let h = harness(4, 16, Duration::from_millis(300));
    h.release(4);
    let a = h.runner.submit(vec![1.0], 1).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let b = h.runner.submit(vec![2.0], 1).unwrap();
    assert_eq!(outputs(a), [10.0]);
    assert_eq!(outputs(b), [20.0]);
    assert_eq!(h.batches(), [vec![1.0, 2.0]]);
}

/// Unloading a model — dropping its last runner handle — ends its thread and frees the
/// executor (the ONNX Runtime session and its memory).
#[test]
fn dropping_the_last_handle_frees_the_executor() {
    struct Dropped(Arc<std::sync::atomic::AtomicBool>);
    impl BatchExecutor for Dropped {
        fn run(&mut self, pixels: Vec<f32>, _count: usize) -> Reply {
            Ok(pixels.into_iter().map(|v| vec![vec![v]]).collect())
        }
    }
    impl Drop for Dropped {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
    let freed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let config = RunnerConfig {
        input_name: "x".into(),
        output_names: vec!["y".into()],
        image_dims: [1, 1, 1],
        max_batch_size: 1,
        max_delay: Duration::ZERO,
        queue_capacity: 1,
    };
    let runner = ModelRunner::spawn_with("dropped", Dropped(freed.clone()), config).unwrap();
    let copy = runner.clone();
    assert_eq!(runner.infer_blocking(vec![3.0], 1).unwrap()[0][0], [3.0]);
    drop(runner);
    std::thread::sleep(Duration::from_millis(50));
    assert!(!freed.load(std::sync::atomic::Ordering::SeqCst), "a handle is still alive");
    drop(copy);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !freed.load(std::sync::atomic::Ordering::SeqCst) {
        assert!(std::time::Instant::now() < deadline, "the executor was not freed");
        std::thread::sleep(Duration::from_millis(5));
    }
}
