//! The batcher's rules with a fake executor whose batches the test releases one by one:
//! arrival order, each request gets its own images' outputs, requests larger than a
//! batch are split, a request that does not fit opens the next batch, a full queue is
//! refused, a departed client's images are never computed, and dropping the runner
//! still answers everything queued. With several instances: batches run side by side,
//! and a batch that runs alone (no other busy, none waiting) takes the whole-machine
//! executor.

use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;

/// Every batch run, with the name of the executor that ran it.
type RunLog = Arc<Mutex<Vec<(String, Vec<f32>)>>>;

/// Each image is one number; its output is that number × 10.
struct Fake {
    name: String,
    batches: RunLog,
    started: Sender<()>,
    permits: Arc<Mutex<Receiver<()>>>,
}

impl BatchExecutor for Fake {
    fn run(&mut self, pixels: Vec<f32>, count: usize, _outputs: usize) -> Reply {
        assert_eq!(pixels.len(), count);
        let _ = self.started.send(());
        let _ = self.permits.lock().unwrap().recv();
        self.batches.lock().unwrap().push((self.name.clone(), pixels.clone()));
        Ok(pixels.into_iter().map(|v| vec![vec![v * 10.0]]).collect())
    }
}

struct Harness {
    runner: ModelRunner,
    batches: RunLog,
    started: Receiver<()>,
    permits: Sender<()>,
}

fn config(max_batch_size: usize, queue_capacity: usize, max_delay: Duration) -> RunnerConfig {
    RunnerConfig {
        input_name: "x".into(),
        output_names: vec!["y".into()],
        image_dims: [1, 1, 1],
        max_batch_size,
        max_delay,
        queue_capacity,
    }
}

fn harness(max_batch_size: usize, queue_capacity: usize, max_delay: Duration) -> Harness {
    harness_with(1, false, config(max_batch_size, queue_capacity, max_delay))
}

/// `instances` executors named `instance-0`…, and with `whole` one named `whole`.
fn harness_with(instances: usize, whole: bool, config: RunnerConfig) -> Harness {
    let batches = Arc::new(Mutex::new(Vec::new()));
    let (started_tx, started) = channel();
    let (permits, permits_rx) = channel();
    let permits_rx = Arc::new(Mutex::new(permits_rx));
    let fake = |name: String| Fake {
        name,
        batches: batches.clone(),
        started: started_tx.clone(),
        permits: permits_rx.clone(),
    };
    let executors = (0..instances).map(|i| fake(format!("instance-{i}"))).collect();
    let whole = whole.then(|| fake("whole".into()));
    let runner = ModelRunner::spawn("fake", executors, whole, config).unwrap();
    Harness { runner, batches, started, permits }
}

impl Harness {
    /// Submits a one-image request and waits until an executor is busy with it, so that
    /// what the test submits next queues up behind it.
    fn occupy(&self) -> oneshot::Receiver<Reply> {
        self.occupy_with(0.0)
    }

    fn occupy_with(&self, value: f32) -> oneshot::Receiver<Reply> {
        let reply = self.runner.submit(vec![value], 1, 1).unwrap();
        self.started.recv_timeout(Duration::from_secs(5)).expect("an executor took the request");
        reply
    }

    fn release(&self, batches: usize) {
        for _ in 0..batches {
            self.permits.send(()).unwrap();
        }
    }

    fn batches(&self) -> Vec<Vec<f32>> {
        self.batches.lock().unwrap().iter().map(|(_, pixels)| pixels.clone()).collect()
    }

    /// The executor that ran the batch holding `value`.
    fn ran_on(&self, value: f32) -> String {
        let batches = self.batches.lock().unwrap();
        batches.iter().find(|(_, pixels)| pixels.contains(&value)).map(|(name, _)| name.clone()).expect("ran")
    }
}

fn outputs(reply: oneshot::Receiver<Reply>) -> Vec<f32> {
    reply.blocking_recv().unwrap().unwrap().into_iter().map(|image| image[0][0]).collect()
}

#[test]
fn batches_keep_arrival_order_and_answer_each_request_with_its_own_images() {
    let h = harness(4, 16, Duration::ZERO);
    let first = h.occupy();
    let a = h.runner.submit(vec![1.0, 2.0, 3.0], 3, 1).unwrap();
    let b = h.runner.submit(vec![4.0], 1, 1).unwrap();
    let c = h.runner.submit(vec![5.0, 6.0], 2, 1).unwrap();
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
    let a = h.runner.submit(vec![1.0, 2.0], 2, 1).unwrap();
    let big = h.runner.submit(vec![3.0, 4.0, 5.0], 3, 1).unwrap();
    let small = h.runner.submit(vec![6.0], 1, 1).unwrap();
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
    let mut parts = h.runner.part_buffers(5);
    assert_eq!(parts.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2, 1]);
    for (slot, value) in parts.iter_mut().flatten().zip(1..) {
        *slot = value as f32;
    }
    let out = h.runner.infer_parts(parts, 1).await.unwrap();
    assert_eq!(out.iter().map(|image| image[0][0]).collect::<Vec<_>>(), [10.0, 20.0, 30.0, 40.0, 50.0]);
    assert!(h.batches().iter().all(|batch| batch.len() <= 2), "{:?}", h.batches());
    assert_eq!(h.batches().concat().len(), 5);
}

#[test]
fn a_full_queue_is_refused_at_once() {
    let h = harness(1, 2, Duration::ZERO);
    let first = h.occupy();
    let queued: Vec<_> = (1..=2).map(|i| h.runner.submit(vec![i as f32], 1, 1).unwrap()).collect();
    assert_eq!(h.runner.submit(vec![9.0], 1, 1).unwrap_err(), InferenceError::Overloaded);
    h.release(3);
    outputs(first);
    for reply in queued {
        outputs(reply);
    }
    // Room again once the queue drained.
    let again = h.runner.submit(vec![7.0], 1, 1).unwrap();
    h.release(1);
    assert_eq!(outputs(again), [70.0]);
}

#[test]
fn images_of_a_departed_client_are_never_computed() {
    let h = harness(4, 16, Duration::ZERO);
    let first = h.occupy();
    let gone = h.runner.submit(vec![1.0, 2.0], 2, 1).unwrap();
    drop(gone);
    let kept = h.runner.submit(vec![3.0], 1, 1).unwrap();
    h.release(2);
    outputs(first);
    assert_eq!(outputs(kept), [30.0]);
    assert_eq!(h.batches(), [vec![0.0], vec![3.0]]);
}

#[test]
fn dropping_the_runner_still_answers_what_was_queued() {
    let h = harness(1, 16, Duration::ZERO);
    let first = h.occupy();
    let queued: Vec<_> = (1..=3).map(|i| h.runner.submit(vec![i as f32], 1, 1).unwrap()).collect();
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
    let a = h.runner.submit(vec![1.0], 1, 1).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let b = h.runner.submit(vec![2.0], 1, 1).unwrap();
    assert_eq!(outputs(a), [10.0]);
    assert_eq!(outputs(b), [20.0]);
    assert_eq!(h.batches(), [vec![1.0, 2.0]]);
}

#[test]
fn instances_run_batches_side_by_side() {
    let h = harness_with(2, false, config(1, 16, Duration::ZERO));
    let first = h.occupy_with(1.0);
    // The second instance starts the next request while the first is still busy.
    let second = h.occupy_with(2.0);
    h.release(2);
    assert_eq!(outputs(first), [10.0]);
    assert_eq!(outputs(second), [20.0]);
    assert_ne!(h.ran_on(1.0), h.ran_on(2.0));
}

#[test]
fn several_instances_still_keep_arrival_order_within_each_batch() {
    let h = harness_with(2, false, config(4, 16, Duration::ZERO));
    let first = h.occupy_with(0.0);
    let second = h.occupy_with(0.5);
    // Both instances are busy: these wait, then fill the next batch in arrival order.
    let a = h.runner.submit(vec![1.0, 2.0, 3.0], 3, 1).unwrap();
    let b = h.runner.submit(vec![4.0], 1, 1).unwrap();
    let c = h.runner.submit(vec![5.0, 6.0], 2, 1).unwrap();
    h.release(5);
    for reply in [first, second] {
        outputs(reply);
    }
    assert_eq!(outputs(a), [10.0, 20.0, 30.0]);
    assert_eq!(outputs(b), [40.0]);
    assert_eq!(outputs(c), [50.0, 60.0]);
    let batches = h.batches();
    assert!(batches.contains(&vec![1.0, 2.0, 3.0, 4.0]), "{batches:?}");
    assert!(batches.contains(&vec![5.0, 6.0]), "{batches:?}");
}

#[test]
fn a_batch_that_runs_alone_gets_the_whole_machine_session() {
    let h = harness_with(2, true, config(1, 16, Duration::ZERO));
    // Nothing else runs: the whole-machine session takes it.
    let alone = h.occupy_with(1.0);
    // Another instance is busy now: this one runs on its own instance's session.
    let beside = h.occupy_with(2.0);
    h.release(2);
    outputs(alone);
    outputs(beside);
    assert_eq!(h.ran_on(1.0), "whole");
    assert!(h.ran_on(2.0).starts_with("instance-"), "{}", h.ran_on(2.0));
    // Both done: alone again.
    let later = h.occupy_with(3.0);
    h.release(1);
    outputs(later);
    assert_eq!(h.ran_on(3.0), "whole");
}

#[test]
fn a_batch_with_requests_waiting_behind_it_stays_on_its_instance() {
    let h = harness_with(1, true, config(1, 16, Duration::ZERO));
    let first = h.occupy_with(1.0);
    // Two more wait while the only instance runs the first batch.
    let (queued, last) = (h.runner.submit(vec![2.0], 1, 1).unwrap(), h.runner.submit(vec![3.0], 1, 1).unwrap());
    assert_eq!(h.runner.waiting.load(Ordering::SeqCst), 2);
    h.release(3);
    assert_eq!((outputs(first), outputs(queued), outputs(last)), (vec![10.0], vec![20.0], vec![30.0]));
    assert_eq!(h.ran_on(1.0), "whole");
    // When 2.0 ran, 3.0 still waited for the next free instance: not alone.
    assert_eq!(h.ran_on(2.0), "instance-0");
    assert_eq!(h.ran_on(3.0), "whole");
    assert_eq!(h.runner.waiting.load(Ordering::SeqCst), 0, "every request counted out");
}

/// Unloading a model — dropping its last runner handle — ends its threads and frees
/// every executor (the ONNX Runtime sessions and their memory).
#[test]
fn dropping_the_last_handle_frees_the_executors() {
    struct Dropped(Arc<std::sync::atomic::AtomicUsize>);
    impl BatchExecutor for Dropped {
        fn run(&mut self, pixels: Vec<f32>, _count: usize, _outputs: usize) -> Reply {
            Ok(pixels.into_iter().map(|v| vec![vec![v]]).collect())
        }
    }
    impl Drop for Dropped {
        fn drop(&mut self) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
    let freed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let executors = vec![Dropped(freed.clone()), Dropped(freed.clone())];
    let runner =
        ModelRunner::spawn("dropped", executors, Some(Dropped(freed.clone())), config(1, 1, Duration::ZERO)).unwrap();
    let copy = runner.clone();
    assert_eq!(runner.infer_blocking(vec![3.0], 1, 1).unwrap()[0][0], [3.0]);
    drop(runner);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(freed.load(std::sync::atomic::Ordering::SeqCst), 0, "a handle is still alive");
    drop(copy);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while freed.load(std::sync::atomic::Ordering::SeqCst) < 3 {
        assert!(std::time::Instant::now() < deadline, "the executors were not all freed");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn the_default_instance_count_depends_on_the_device() {
    let batching = |instances| Batching { max_batch_size: 8, max_delay: Duration::ZERO, queue_capacity: 8, instances };
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    assert_eq!(batching(0).instances_on(Device::Cpu), if cores >= 2 { 2 } else { 1 });
    assert_eq!(batching(0).instances_on(Device::Cuda(0)), 1);
    assert_eq!(batching(3).instances_on(Device::Cpu), 3);
    assert_eq!(batching(3).instances_on(Device::Cuda(0)), 3);
}

/// A batch asks its executor for the most outputs any of its requests wants.
#[test]
fn a_batch_runs_with_the_most_outputs_its_requests_ask_for() {
    struct Counting(Arc<Mutex<Vec<usize>>>);
    impl BatchExecutor for Counting {
        fn run(&mut self, pixels: Vec<f32>, _count: usize, outputs: usize) -> Reply {
            self.0.lock().unwrap().push(outputs);
            Ok(pixels.into_iter().map(|v| (0..outputs).map(|k| vec![v + k as f32]).collect()).collect())
        }
    }
    let asked = Arc::new(Mutex::new(Vec::new()));
    let config = RunnerConfig {
        output_names: vec!["scores".into(), "features".into(), "map".into()],
        ..config(4, 4, Duration::from_millis(300))
    };
    let runner = ModelRunner::spawn("counting", vec![Counting(asked.clone())], None, config).unwrap();
    let one = runner.submit(vec![1.0], 1, 1).unwrap();
    let two = runner.submit(vec![2.0], 1, 2).unwrap();
    let (one, two) = (one.blocking_recv().unwrap().unwrap(), two.blocking_recv().unwrap().unwrap());
    assert_eq!(*asked.lock().unwrap(), [2], "one batch, with the larger ask");
    assert_eq!((one[0].len(), two[0].len()), (2, 2));
    assert_eq!(runner.infer_blocking(vec![5.0], 1, 3).unwrap()[0], [vec![5.0], vec![6.0], vec![7.0]]);
    assert_eq!(*asked.lock().unwrap(), [2, 3]);
}
