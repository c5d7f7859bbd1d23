//! `zdn demo`: the main job end to end on a built-in default, and what it prints.

use std::path::PathBuf;

use clap::Args;

use crate::cli::delta::encode::print_encode;
use crate::cli::delta::eval::print_eval;
use crate::cli::output::say;
use crate::demo;

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Working directory for the models and outputs.
    #[arg(long, default_value = ".work/demo")]
    dir: PathBuf,
    /// Use a generated model instead of installing the real MiniLM pair.
    #[arg(long)]
    synthetic: bool,
    #[arg(long)]
    json: bool,
}

pub fn run(a: &DemoArgs) -> anyhow::Result<u8> {
    run_demo(a)?;
    Ok(0)
}

fn run_demo(a: &DemoArgs) -> anyhow::Result<()> {
    let say = |s: &str| {
        if !a.json {
            say!("{s}");
        }
    };
    say("zdn demo: encode a fine-tune as a BitDelta, apply it to the base, measure the result");
    let pair = demo::obtain_pair(&a.dir, a.synthetic)?;
    if let Some(why) = &pair.fallback_reason {
        say(&format!("  using a generated model ({why})"));
    } else {
        say("  model: all-MiniLM-L6-v2 base + a real fine-tune of it (from PyPI packages)");
    }
    let report = demo::run(&a.dir, &pair, !a.json)?;
    if a.json {
        say!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let fine_bytes = std::fs::metadata(&pair.finetuned)
        .map(|m| m.len())
        .unwrap_or(0);
    say!(
        "  fine-tune        {:>12} bytes  {}",
        fine_bytes,
        pair.finetuned.display()
    );
    print_encode(&report.encode);
    say!(
        "  applied          {} ({} tensors); deterministic: {}",
        report.apply.output.display(),
        report.apply.tensors,
        if report.deterministic {
            "yes (two applies, same BLAKE3)"
        } else {
            "NO"
        }
    );
    print_eval(&report.eval);
    match (&report.quality, &report.quality_skipped) {
        (Some(q), _) => say!(
            "  quality          sentence-embedding cosine to the fine-tune on {} held-out sentences of {}: mean {:.5}, min {:.5} (base alone: mean {:.5}, min {:.5})",
            q.sentences, q.corpus, q.delta.mean, q.delta.min, q.base.mean, q.base.min
        ),
        (None, Some(why)) => say!("  quality          not measured: {why}"),
        (None, None) => {}
    }
    let p = &report.publish;
    say!(
        "  published        base {} and delta {} in a datacenter store, signed by {}",
        &p.base_manifest.to_hex()[..16],
        &p.delta_manifest.to_hex()[..16],
        &p.publisher.to_hex()[..16]
    );
    say!(
        "  carried          the base as a bundle file (a USB disk) to a field store trusting only that key; bundles: {} bytes (base + delta), {} bytes (delta only)",
        p.bundle_bytes,
        p.delta_bundle_bytes
    );
    say!("  link             {}", p.link);
    say!(
        "  network          the field node fetched the delta from the datacenter node over {}: {} chunk bytes in {:.1} s = {:.0} kbit/s, {:.0}% of the link{}",
        p.network_path,
        p.network_bytes,
        p.network_seconds,
        p.network_bytes as f64 * 8.0 / 1000.0 / p.network_seconds.max(1e-9),
        100.0 * p.network_bytes as f64 / (p.link_rate as f64 * p.network_seconds.max(1e-9)),
        if p.link_ip_bytes_down > 0 {
            format!(
                "; the link carried {} IP bytes down and {} up (headers, handshakes, requests included)",
                p.link_ip_bytes_down, p.link_ip_bytes_up
            )
        } else {
            String::new()
        }
    );
    say!(
        "  verified         every chunk and object hash checked; field apply identical to the datacenter's: {}",
        if p.verified { "yes" } else { "NO" }
    );
    anyhow::ensure!(report.deterministic, "apply was not deterministic");
    anyhow::ensure!(
        p.verified,
        "the field side's result differs from the datacenter's"
    );
    Ok(())
}
