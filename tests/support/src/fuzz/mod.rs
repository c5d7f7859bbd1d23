//! A small fuzzer for zdn's parsers, on stable Rust: every parser of input that comes from outside
//! (peers, files, bundles) is fed mutations of valid inputs — bit flips, interesting numbers,
//! insertions, deletions, splices of two inputs, truncations — and must neither panic nor accept
//! something it would not write back the same (for the formats whose encoding is canonical: one
//! value, one encoding). Inputs a parser accepts join that target's corpus, so later mutations
//! start deeper in the format. Not coverage-guided (that needs a nightly compiler): the seeds and
//! the corpus carry it past the first checks.
//!
//! `zdn-fuzz` (src/bin) runs it for as many executions as asked; the test below runs a short
//! version of every target on each `cargo test`.

mod mutate;
mod seeds;
mod targets;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

pub use mutate::Rng;
pub use targets::{targets, Target};

/// Inputs a target's corpus keeps (seeds included).
const MAX_CORPUS: usize = 512;
/// Largest input tried.
const MAX_INPUT: usize = 1 << 20;

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub executions: u64,
    /// Inputs the parser accepted.
    pub accepted: u64,
    pub corpus: usize,
    pub elapsed: Duration,
    /// The first failure: what went wrong, and the input.
    pub failure: Option<(String, Vec<u8>)>,
}

/// Runs `target` for `executions` inputs from random seed `seed`; stops at the first failure.
pub fn run(target: &Target, executions: u64, seed: u64) -> Stats {
    let mut rng = Rng::new(seed ^ fnv(target.name));
    let mut corpus = (target.seeds)();
    let mut stats = Stats::default();
    let t0 = Instant::now();
    let quiet = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut input = Vec::new();
    while stats.executions < executions {
        mutate::next_input(&mut rng, &corpus, &mut input, MAX_INPUT);
        stats.executions += 1;
        match catch_unwind(AssertUnwindSafe(|| (target.check)(&input))) {
            Ok(Ok(true)) => {
                stats.accepted += 1;
                if corpus.len() < MAX_CORPUS && !corpus.contains(&input) {
                    corpus.push(input.clone());
                }
            }
            Ok(Ok(false)) => {}
            Ok(Err(why)) => {
                stats.failure = Some((why, input.clone()));
                break;
            }
            Err(panic) => {
                let why = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                stats.failure = Some((format!("panicked: {why}"), input.clone()));
                break;
            }
        }
    }
    std::panic::set_hook(quiet);
    stats.corpus = corpus.len();
    stats.elapsed = t0.elapsed();
    stats
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The short run CI does: every target, 20 000 inputs each, none may fail.
    #[test]
    fn every_parser_survives_a_short_run() {
        for t in targets() {
            let s = run(&t, 20_000, 1);
            assert!(
                s.failure.is_none(),
                "{}: {:?}",
                t.name,
                s.failure.map(|(w, i)| (w, i.len()))
            );
            assert!(
                s.accepted > 0,
                "{}: not one input accepted (seeds broken?)",
                t.name
            );
        }
    }
}
