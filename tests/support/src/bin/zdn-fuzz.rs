//! `zdn-fuzz`: runs the fuzzer of `zdn_test_support::fuzz` on every parser (or those named) for
//! a number of executions each and prints one line per target: executions, inputs accepted,
//! corpus size, seconds, executions per second. Exit status 1 on the first failure, whose input is
//! written to `fuzz-failure-<target>.bin`. Build it in release mode with overflow checks:
//!
//!   cargo run --profile fuzz -p zdn-test-support --bin zdn-fuzz -- --executions 10000000
//!   zdn-fuzz --write-seeds DIR     (the seed inputs, one file per seed)

use std::process::ExitCode;

use anyhow::{bail, Context};
use zdn_test_support::fuzz::{run, targets};

fn main() -> anyhow::Result<ExitCode> {
    let mut executions: u64 = 100_000;
    let mut seed: u64 = 1;
    let mut only: Vec<String> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--executions" => executions = args.next().context("--executions N")?.parse()?,
            "--seed" => seed = args.next().context("--seed N")?.parse()?,
            "--target" => only.push(args.next().context("--target NAME")?),
            "--write-seeds" => {
                let dir = std::path::PathBuf::from(args.next().context("--write-seeds DIR")?);
                std::fs::create_dir_all(&dir)?;
                for t in targets() {
                    for (i, s) in (t.seeds)().iter().enumerate() {
                        std::fs::write(dir.join(format!("{}-{i}.bin", t.name)), s)?;
                    }
                }
                return Ok(ExitCode::SUCCESS);
            }
            other => bail!("unknown argument {other:?} (--executions N, --seed N, --target NAME, --write-seeds DIR)"),
        }
    }
    let names: Vec<&str> = targets().iter().map(|t| t.name).collect();
    if let Some(unknown) = only.iter().find(|o| !names.contains(&o.as_str())) {
        bail!(
            "unknown target {unknown:?}; the targets: {}",
            names.join(", ")
        );
    }
    let mut failed = false;
    for t in targets()
        .into_iter()
        .filter(|t| only.is_empty() || only.iter().any(|o| o == t.name))
    {
        let s = run(&t, executions, seed);
        let secs = s.elapsed.as_secs_f64();
        println!(
            "{:<20} executions {:>10}  accepted {:>9}  corpus {:>4}  seeds {:>2}  {:>8.1} s  {:>9.0}/s",
            t.name,
            s.executions,
            s.accepted,
            s.corpus,
            (t.seeds)().len(),
            secs,
            s.executions as f64 / secs.max(1e-9)
        );
        if let Some((why, input)) = s.failure {
            let path = format!("fuzz-failure-{}.bin", t.name);
            std::fs::write(&path, &input)?;
            println!("  FAILED: {why} (input: {path}, {} bytes)", input.len());
            failed = true;
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
