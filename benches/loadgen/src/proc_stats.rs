//! The broker process's resident memory and CPU time, from `/proc/<pid>/status` and `/proc/<pid>/stat`.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// One reading of a process's memory and CPU time.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(crate) struct ProcSample {
    /// VmRSS in KiB.
    pub(crate) rss_kb: u64,
    /// utime + stime in seconds.
    pub(crate) cpu_s: f64,
}

pub(crate) fn sample(pid: u32) -> Result<ProcSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status (is --broker-pid right?)"))?;
    let rss_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .context("no VmRSS in /proc/PID/status")?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may contain spaces) in parentheses: state is field 3, utime 14, stime 15.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).context("malformed /proc/PID/stat")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| -> Result<u64> {
        fields.get(i).and_then(|v| v.parse::<u64>().ok()).context("malformed /proc/PID/stat")
    };
    let clk_tck = clock_ticks_per_second();
    let cpu_s = (ticks(11)? + ticks(12)?) as f64 / clk_tck;
    Ok(ProcSample { rss_kb, cpu_s })
}

#[allow(unsafe_code, reason = "sysconf is a plain libc query without pointers")]
fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf takes an integer and returns an integer.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// Raises the soft open-file limit to the hard one, so that thousands of connections fit.
#[allow(unsafe_code, reason = "getrlimit/setrlimit take a pointer to a local struct")]
pub(crate) fn raise_nofile_limit() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `lim` is a valid, writable rlimit for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 0;
    }
    if lim.rlim_cur < lim.rlim_max {
        let want = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
        // SAFETY: `want` is a valid rlimit read by the call.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } == 0 {
            return want.rlim_cur;
        }
    }
    lim.rlim_cur
}
