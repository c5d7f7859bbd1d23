//! `zdn status`, `zdn peers` and `zdn announce`: questions and requests to the running node.

use crate::cli::args::Location;
use crate::cli::output::say;
use crate::cli::session::runtime;
use crate::daemon::control::{self, ControlRequest};

pub fn run_status(loc: &Location, json: bool, peers_only: bool) -> anyhow::Result<u8> {
    let config = loc.config()?;
    let dir = loc.store_dir(&config);
    let socket = control::socket_path(&dir);
    runtime()?.block_on(async {
        let req = if peers_only {
            ControlRequest::Peers
        } else {
            ControlRequest::Status
        };
        let line = match control::request(&socket, &req, &mut |_| {}).await {
            Ok(l) => l,
            Err(control::ControlError::NotRunning(_)) if !peers_only => {
                let store = loc.open(&config)?;
                let v = serde_json::json!({
                    "node": "not running",
                    "objects": store.list()?,
                    "partial_downloads": store.partials()?.iter().map(|m| m.hash()).collect::<Vec<_>>(),
                });
                say!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(0);
            }
            Err(e) => return Err(e.into()),
        };
        let v = line
            .result
            .ok_or_else(|| anyhow::anyhow!(line.error.unwrap_or_default()))?;
        if json || !peers_only {
            say!("{}", serde_json::to_string_pretty(&v)?);
        } else if let Some(list) = v.as_array() {
            for p in list {
                say!(
                    "{} {} rtt {}",
                    p["peer"].as_str().unwrap_or("?"),
                    p["addresses"],
                    p["rtt_ms"]
                );
            }
        }
        anyhow::Ok(0)
    })
}

pub fn run_announce(loc: &Location, object: String) -> anyhow::Result<u8> {
    let config = loc.config()?;
    let socket = control::socket_path(&loc.store_dir(&config));
    runtime()?.block_on(async {
        let line = control::request(
            &socket,
            &ControlRequest::Announce { hash: object },
            &mut |_| {},
        )
        .await?;
        match line.result {
            Some(v) if line.ok => {
                say!("{}", v["announced"].as_str().unwrap_or(""));
                anyhow::Ok(0)
            }
            _ => Err(anyhow::anyhow!(line.error.unwrap_or_default())),
        }
    })
}
