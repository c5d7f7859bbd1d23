//! `zdn fetch HASH`: an object from peers into the store, every byte verified, through the node
//! running on the store or a node started for this fetch.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use zdn_node::net::{FetchOptions, FetchReport};
use zdn_protocol::Hash;

use crate::cli::args::Location;
use crate::cli::fetch_report::{print_report, report_json};
use crate::cli::output::say;
use crate::cli::session::{runtime, shutdown_signal, start, NetArgs, Serving};
use crate::daemon::control::{self, ControlRequest};
use crate::daemon::service::{exit, exit_code};
use crate::home::config::Config;

#[derive(Args, Debug)]
pub struct FetchArgs {
    /// Manifest hash of the object (64 hex digits).
    hash: Hash,
    /// Also write the object to this file (verified, written atomically).
    #[arg(short, long)]
    output: Option<PathBuf>,
    #[command(flatten)]
    net: NetArgs,
    /// Fail instead of fetching a delta's missing base first.
    #[arg(long)]
    no_base: bool,
    /// Print a JSON report instead of a summary.
    #[arg(long)]
    json: bool,
}

fn bar(json: bool) -> ProgressBar {
    let b = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::hidden());
    if !json && std::io::stderr().is_terminal() {
        b.set_draw_target(ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        ) {
            b.set_style(style.progress_chars("=> "));
        }
    }
    b
}

fn show_progress(b: &ProgressBar, p: &zdn_node::net::FetchProgress) {
    b.set_length(p.total_bytes);
    b.set_position(p.done_bytes);
    if p.waiting_for_peers_s > 0 {
        let msg = format!(
            "no peer reachable ({}); dialing again in {} s",
            p.dial_problem, p.waiting_for_peers_s
        );
        // Said once per try also where no bar is drawn (a log, a cron job).
        if b.is_hidden() {
            eprintln!("zdn fetch: {msg}");
        }
        b.set_message(msg);
    } else if p.waiting_for_window_s > 0 {
        b.set_message(format!(
            "{} waiting {} s for the next sync window",
            p.name, p.waiting_for_window_s
        ));
    } else {
        b.set_message(format!("{} ({} peers)", p.name, p.peers));
    }
}

/// A fetch's report, or its error message and exit code.
type Outcome = Result<FetchReport, (String, u8)>;

pub fn run_fetch(loc: &Location, a: FetchArgs) -> anyhow::Result<u8> {
    let config = loc.config()?;
    let dir = loc.store_dir(&config);
    let socket = control::socket_path(&dir);
    runtime()?.block_on(async {
        let b = bar(a.json);
        let result = if control::is_running(&socket).await {
            fetch_through_node(&socket, &a, &b).await?
        } else {
            fetch_with_own_node(loc, &config, &a, &b).await?
        };
        b.finish_and_clear();
        print_outcome(&a, result)
    })
}

/// Asks the node running on the store (control socket `socket`) to fetch, and with `-o` to write
/// the object out.
async fn fetch_through_node(
    socket: &Path,
    a: &FetchArgs,
    b: &ProgressBar,
) -> anyhow::Result<Outcome> {
    let given = a.net.node_settings_given();
    anyhow::ensure!(
        given.is_empty(),
        "a node runs on this store and the fetch goes through it: {} set the node's own behaviour and cannot apply to one fetch; leave them out, or set them on `zdn node run`",
        given.join(", ")
    );
    let req = ControlRequest::Fetch {
        hash: a.hash.to_hex(),
        peers: a.net.peers.iter().map(|p| p.to_string()).collect(),
        fetch_base: !a.no_base,
    };
    let mut on_progress = |v: &serde_json::Value| {
        if let Ok(p) = serde_json::from_value(v.clone()) {
            show_progress(b, &p);
        }
    };
    let fetching = control::request(socket, &req, &mut on_progress);
    let r = tokio::select! {
        r = fetching => {
            let line = r?;
            match (line.ok, line.result) {
                (true, Some(v)) => Ok(serde_json::from_value(v)?),
                _ => Err((line.error.unwrap_or_default(), line.code.unwrap_or(1))),
            }
        }
        _ = shutdown_signal() => Err(("interrupted (the node goes on fetching)".into(), exit::INTERRUPTED)),
    };
    Ok(match (&r, &a.output) {
        (Ok(_), Some(out)) => {
            // The node owns the store: it writes the file (an absolute path, same machine).
            let path = std::path::absolute(out)?;
            let req = ControlRequest::Get {
                hash: a.hash.to_hex(),
                output: path.to_string_lossy().into_owned(),
            };
            let line = control::request(socket, &req, &mut |_| {}).await?;
            if !line.ok {
                Err((line.error.unwrap_or_default(), 1))
            } else {
                r
            }
        }
        _ => r,
    })
}

/// Starts a node for this fetch, fetches (and with `-o` writes the object out), stops the node.
async fn fetch_with_own_node(
    loc: &Location,
    config: &Config,
    a: &FetchArgs,
    b: &ProgressBar,
) -> anyhow::Result<Outcome> {
    let mut s = start(loc, config, &a.net, Serving::default()).await?;
    let opts = FetchOptions {
        peers: a.net.peers.clone(),
        fetch_base: !a.no_base,
        sync_windows: a.net.windows()?,
        ..Default::default()
    };
    let mut on_progress = |p: &zdn_node::net::FetchProgress| show_progress(b, p);
    let r = tokio::select! {
        r = s.service.fetch(a.hash, &opts, &mut on_progress) => {
            r.map_err(|e| (e.to_string(), exit_code(&e)))
        }
        _ = shutdown_signal() => Err((
            "interrupted; run the same command again to resume (verified chunks are kept)".into(),
            exit::INTERRUPTED,
        )),
    };
    if let (Ok(_), Some(out)) = (&r, &a.output) {
        let path = out.clone();
        let hash = a.hash;
        let store = s.service.handle.store().clone();
        let m = store.call(move |st| st.require_manifest(&hash)).await?;
        tokio::task::spawn_blocking(move || {
            crate::fs::object_output::write_object_blocking(&store, &m, &path, false)
        })
        .await?
        .with_context(|| format!("writing {}", out.display()))?;
    }
    let _ = s.stop.send(());
    let _ = (&mut s.task).await;
    Ok(r)
}

/// Prints the report (or the error) and returns the exit code.
fn print_outcome(a: &FetchArgs, result: Outcome) -> anyhow::Result<u8> {
    match result {
        Ok(r) => {
            if a.json {
                say!("{}", serde_json::to_string_pretty(&report_json(&r)?)?);
            } else {
                print_report(&r);
                if let Some(o) = &a.output {
                    say!("wrote {}", o.display());
                }
            }
            Ok(0)
        }
        Err((msg, code)) => {
            eprintln!("error: fetch {}: {msg}", a.hash);
            Ok(code)
        }
    }
}
