//! CPU time of the processes a benchmark side runs on (from `/proc`, Linux): where a job's
//! cost goes — the server, the bench process, a worker, the aggregator — in microseconds per
//! job, measured over the same interval as the side's throughput.

use std::collections::BTreeMap;

/// `/proc/<pid>/stat` counts in USER_HZ, which Linux fixes at 100 per second for every
/// program reading it.
const TICKS_PER_SECOND: f64 = 100.0;

/// The CPU clocks of some processes, read at the start of a side.
pub(crate) struct CpuClock {
    start: Vec<(&'static str, u32, u64)>,
}

impl CpuClock {
    /// Start counting for `processes` (role, pid); one whose CPU time cannot be read (not
    /// Linux, gone) is left out.
    pub(crate) fn start(processes: &[(&'static str, u32)]) -> Self {
        let start = processes
            .iter()
            .filter_map(|&(role, pid)| Some((role, pid, cpu_ticks(pid)?)))
            .collect();
        CpuClock { start }
    }

    /// Microseconds of CPU (user + system, all threads) each process spent per job since
    /// [`CpuClock::start`], by role.
    pub(crate) fn per_job(&self, jobs: u64) -> BTreeMap<String, f64> {
        self.start
            .iter()
            .filter_map(|&(role, pid, before)| {
                let spent = cpu_ticks(pid)?.saturating_sub(before) as f64 / TICKS_PER_SECOND;
                Some((role.to_owned(), spent * 1e6 / jobs.max(1) as f64))
            })
            .collect()
    }
}

/// User plus system time of process `pid` (all its threads), in ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; the fields after its ')' are fixed.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let (user, system) = (fields.get(11)?, fields.get(12)?);
    Some(user.parse::<u64>().ok()? + system.parse::<u64>().ok()?)
}

/// "server 41.0, worker 23.5, …" for a table row; "n/a" when nothing could be read.
pub(crate) fn describe(cpu: &BTreeMap<String, f64>) -> String {
    if cpu.is_empty() {
        return "n/a".into();
    }
    let total: f64 = cpu.values().sum();
    let parts: Vec<String> = cpu.iter().map(|(k, v)| format!("{k} {v:.1}")).collect();
    format!("{} (total {total:.1})", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_spends_cpu_and_it_is_counted_per_job() {
        let pid = std::process::id();
        let clock = CpuClock::start(&[("bench", pid)]);
        let started = std::time::Instant::now();
        let mut x = 0u64;
        while started.elapsed() < std::time::Duration::from_millis(200) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let wall_us = started.elapsed().as_secs_f64() * 1e6;
        let cpu = clock.per_job(1000);
        // 200 ms of busy loop over 1,000 jobs: some CPU (ticks are 10 ms), and no more than
        // the wall time on every core (other tests run in this process meanwhile).
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let bench = cpu["bench"];
        assert!(bench >= 10.0, "{bench}");
        assert!(bench <= (wall_us * cores + 20_000.0) / 1000.0, "{bench}");
        assert_eq!(describe(&BTreeMap::new()), "n/a");
        assert!(describe(&cpu).starts_with("bench "));
    }
}
