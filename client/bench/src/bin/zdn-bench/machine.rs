//! The machine a run was taken on, recorded with every result.

use super::*;

// ---------------------------------------------------------------------------------------------------
// machine

#[derive(Debug, Clone, Serialize)]
pub(super) struct Machine {
    cpu: String,
    cores: usize,
    mem_total_kib: u64,
    build: &'static str,
    /// The codec kernel in use (`ZDN_KERNEL=portable` forces the portable one) and those available.
    kernel: &'static str,
    kernels_available: Vec<&'static str>,
}

pub(super) fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .and_then(|r| r.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_total_kib = mem
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    Machine {
        cpu,
        cores: std::thread::available_parallelism().map_or(1, usize::from),
        mem_total_kib,
        build: if cfg!(debug_assertions) {
            "debug-assertions (not a benchmark build)"
        } else {
            "release"
        },
        kernel: Kernel::selected().name(),
        kernels_available: Kernel::ALL
            .into_iter()
            .filter(|k| k.is_available())
            .map(Kernel::name)
            .collect(),
    }
}
