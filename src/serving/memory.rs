//! What models cost in memory: the bytes a load leaves allocated (from jemalloc's per-thread
//! counters, which see ONNX Runtime's allocations too, the process's malloc being jemalloc),
//! the `--max-model-memory` budget they load under, and which models make room for a new one.

use std::path::Path;
use std::str::FromStr;
use std::time::Instant;

/// `--max-model-memory`: bytes, or a share of the machine's memory (`60%`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MemoryLimit {
    Bytes(u64),
    /// Percent of the memory this process may use: its cgroup's limit, else the machine's.
    Percent(f64),
}

impl FromStr for MemoryLimit {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let invalid = || format!("{text:?} is neither a number of bytes nor a percentage such as 60%");
        match text.strip_suffix('%') {
            Some(percent) => match percent.trim().parse::<f64>() {
                Ok(p) if p > 0.0 && p <= 100.0 => Ok(Self::Percent(p)),
                Ok(_) => Err(format!("{text}: a share of memory is above 0% and at most 100%")),
                Err(_) => Err(invalid()),
            },
            None => match text.parse::<u64>() {
                Ok(0) => Err("a memory budget of 0 bytes would load no model".to_owned()),
                Ok(bytes) => Ok(Self::Bytes(bytes)),
                Err(_) => Err(invalid()),
            },
        }
    }
}

impl MemoryLimit {
    /// The budget in bytes; a share needs to know the machine's memory.
    pub fn bytes(self) -> Result<u64, String> {
        match self {
            Self::Bytes(bytes) => Ok(bytes),
            Self::Percent(percent) => {
                let total = available_memory()?;
                Ok((total as f64 * percent / 100.0) as u64)
            }
        }
    }
}

/// The memory this process may use: its cgroup v2 limit when one is set (a container's),
/// else the machine's total.
fn available_memory() -> Result<u64, String> {
    let total = machine_memory()?;
    Ok(cgroup_limit().map_or(total, |limit| limit.min(total)))
}

fn machine_memory() -> Result<u64, String> {
    let meminfo = fs_err::read_to_string("/proc/meminfo").map_err(|e| e.to_string())?;
    meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|kib| kib.trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .ok_or_else(|| "/proc/meminfo has no MemTotal line; give --max-model-memory in bytes".to_owned())
}

fn cgroup_limit() -> Option<u64> {
    let membership = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = membership.lines().find_map(|line| line.strip_prefix("0::"))?;
    let file = Path::new("/sys/fs/cgroup").join(path.trim_start_matches('/')).join("memory.max");
    std::fs::read_to_string(file).ok()?.trim().parse().ok()
}

/// Runs `load` and returns what it returned with the bytes it left allocated on this
/// thread: a model's sessions, weights and prepacked weights are made on the loading thread,
/// and its warm-up activations are freed by the time it returns. `None` when the process's
/// allocator keeps no such count (a build without jemalloc).
pub fn retained_by<T>(load: impl FnOnce() -> T) -> (T, Option<u64>) {
    let before = thread_net_allocated();
    let value = load();
    let retained = match (before, thread_net_allocated()) {
        (Some(before), Some(after)) => Some(after.saturating_sub(before).max(0) as u64),
        _ => None,
    };
    (value, retained)
}

/// Bytes allocated minus bytes freed by this thread since it started.
#[cfg(feature = "jemalloc")]
fn thread_net_allocated() -> Option<i64> {
    let allocated = tikv_jemalloc_ctl::thread::allocatedp::read().ok()?.get();
    let freed = tikv_jemalloc_ctl::thread::deallocatedp::read().ok()?.get();
    Some(allocated as i64 - freed as i64)
}

#[cfg(not(feature = "jemalloc"))]
fn thread_net_allocated() -> Option<i64> {
    None
}

/// What a model is expected to take before it has ever loaded here: its file, times this
/// much. Measured (README, memory section): with weights shared, a model's sessions hold
/// 1.3–2.0× its file; each further load is planned with what the last one measured, and
/// a first load that measures more than planned makes room once it is done.
pub const FIRST_LOAD_ESTIMATE: f64 = 2.0;

/// A model in memory that may make room for another.
#[derive(Debug, Clone, PartialEq)]
pub struct Resident {
    pub name: String,
    pub bytes: u64,
    pub last_used: Instant,
    /// Pinned models (`--preload`, manifest `preload = true`) stay.
    pub pinned: bool,
}

/// The models to unload (their places in `residents`), least recently used first, so that
/// `needed` more bytes fit in `budget`; Err says why no choice fits (pinned models hold too
/// much).
pub fn make_room(residents: &[Resident], needed: u64, budget: u64) -> Result<Vec<usize>, String> {
    let mut used: u64 = residents.iter().map(|r| r.bytes).sum();
    let mut candidates: Vec<usize> = (0..residents.len()).filter(|&i| !residents[i].pinned).collect();
    candidates.sort_by_key(|&i| residents[i].last_used);
    let mut victims = Vec::new();
    for candidate in candidates {
        if used.saturating_add(needed) <= budget {
            break;
        }
        used -= residents[candidate].bytes;
        victims.push(candidate);
    }
    if used.saturating_add(needed) > budget {
        return Err(format!(
            "it needs about {} MB and the --max-model-memory budget is {} MB, of which {} MB are held by \
             pinned models",
            mb(needed),
            mb(budget),
            mb(used)
        ));
    }
    Ok(victims)
}

fn mb(bytes: u64) -> u64 {
    bytes.div_ceil(1_000_000)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn resident(name: &str, bytes: u64, age_seconds: u64, pinned: bool) -> Resident {
        let now = Instant::now() + Duration::from_secs(1000);
        Resident { name: name.to_owned(), bytes, last_used: now - Duration::from_secs(age_seconds), pinned }
    }

    #[test]
    fn limits_read_as_bytes_or_a_share() {
        assert_eq!("1500000000".parse::<MemoryLimit>(), Ok(MemoryLimit::Bytes(1_500_000_000)));
        assert_eq!(" 60% ".parse::<MemoryLimit>(), Ok(MemoryLimit::Percent(60.0)));
        for bad in ["0", "0%", "101%", "-5", "lots", "1.5GB", ""] {
            assert!(bad.parse::<MemoryLimit>().is_err(), "{bad:?} should be refused");
        }
        let share = MemoryLimit::Percent(50.0).bytes().unwrap();
        let whole = machine_memory().unwrap();
        assert!(share > 0 && share <= whole / 2 + 1, "half of the memory available: {share} of {whole}");
    }

    #[test]
    fn the_least_recently_used_unpinned_models_make_room() {
        let residents = [
            resident("pinned-old", 400, 900, true),
            resident("old", 300, 500, false),
            resident("middle", 200, 300, false),
            resident("recent", 100, 10, false),
        ];
        let names = |victims: Vec<usize>| victims.into_iter().map(|i| residents[i].name.as_str()).collect::<Vec<_>>();
        // 1,000 held; 250 more in a budget of 1,000 needs 250 freed: "old" (300) suffices.
        assert_eq!(names(make_room(&residents, 250, 1000).unwrap()), ["old"]);
        // 450 more: "old" then "middle" (500 freed), never the pinned one though it is older.
        assert_eq!(names(make_room(&residents, 450, 1000).unwrap()), ["old", "middle"]);
        // It fits already: nothing goes.
        assert!(make_room(&residents, 100, 1100).unwrap().is_empty());
        // Only the pinned 400 would be left: 700 cannot fit in 1,000.
        let refusal = make_room(&residents, 700, 1000).unwrap_err();
        assert!(refusal.contains("pinned"), "{refusal}");
    }

    #[test]
    fn what_a_load_leaves_allocated_is_counted() {
        let (kept, retained) = retained_by(|| {
            let transient = vec![1u8; 8 << 20];
            drop(std::hint::black_box(transient));
            std::hint::black_box(vec![7u8; 4 << 20])
        });
        if cfg!(feature = "jemalloc") {
            let retained = retained.expect("jemalloc counts per thread");
            // The kept 4 MiB, not the freed 8 MiB (a little bookkeeping aside).
            assert!((4 << 20..(4 << 20) + (64 << 10)).contains(&retained), "{retained}");
        } else {
            assert_eq!(retained, None);
        }
        assert_eq!(kept.len(), 4 << 20);
    }
}
