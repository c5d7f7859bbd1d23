//! What `zdn fetch` prints when it is done: a summary, or the report as JSON.

use zdn_node::net::FetchReport;

use crate::cli::output::say;

/// The fetch report as JSON, with the manifest's quality report (a JSON note) as an object.
pub fn report_json(r: &FetchReport) -> anyhow::Result<serde_json::Value> {
    let mut v = serde_json::to_value(r)?;
    if let (Some(obj), Some(q)) = (v.as_object_mut(), quality_note(&r.notes)) {
        obj.insert("quality".into(), q);
    }
    if let (Some(b), Some(obj)) = (&r.base, v.as_object_mut()) {
        obj.insert("base".into(), report_json(b)?);
    }
    if let Some(obj) = v.as_object_mut() {
        let components = r
            .components
            .iter()
            .map(report_json)
            .collect::<anyhow::Result<Vec<_>>>()?;
        obj.insert("components".into(), components.into());
    }
    Ok(v)
}

/// The `quality` note of a manifest, parsed (signed JSON written by `zdn add --quality`).
pub fn quality_note(notes: &[(String, String)]) -> Option<serde_json::Value> {
    notes
        .iter()
        .find(|(k, _)| k == "quality")
        .and_then(|(_, v)| serde_json::from_str(v).ok())
}

pub fn print_report(r: &FetchReport) {
    if let Some(b) = &r.base {
        print_report(b);
    }
    if r.already_present {
        say!("{} {} is already in the store", r.name, r.hash);
    } else {
        print_transfer(r);
    }
    if !r.components.is_empty() {
        say!(
            "soup {} needs {} component deltas:",
            r.name,
            r.components.len()
        );
        for c in &r.components {
            print_report(c);
        }
    }
}

fn print_transfer(r: &FetchReport) {
    let rate = if r.seconds > 0.0 {
        r.bytes_received as f64 / r.seconds
    } else {
        0.0
    };
    say!(
        "fetched {} {} ({} {} bytes): {} chunks ({} already here), {} bytes received in {:.1} s ({:.0} B/s), verified",
        r.kind.as_str(),
        r.hash,
        r.name,
        r.object_len,
        r.chunks,
        r.chunks_resumed,
        r.bytes_received,
        r.seconds,
        rate
    );
    for p in &r.peers {
        let mut notes = Vec::new();
        if p.banned {
            notes.push("banned: sent corrupt data".to_string());
        }
        if p.from_dht {
            notes.push("found in the DHT".to_string());
        }
        if p.reconnects > 0 {
            notes.push(format!("reconnected {}x", p.reconnects));
        }
        let notes = if notes.is_empty() {
            String::new()
        } else {
            format!(" ({})", notes.join(", "))
        };
        say!(
            "  peer {} {} chunks, {} bytes{notes}",
            p.peer,
            p.chunks,
            p.bytes
        );
    }
    if let Some(l) = &r.paced {
        let stopped = l
            .stopped
            .as_deref()
            .map(|s| format!("; stopped: {s}"))
            .unwrap_or_default();
        let resumed = match (&l.last_silence, l.resumes) {
            (Some(why), n) if n > 0 => {
                format!("; the peer went silent, asked again {n} time(s) (last: {why})")
            }
            _ => String::new(),
        };
        say!(
            "  paced lane: {} chunks in {} session(s), {} datagrams ({} duplicates){resumed}{stopped}",
            l.chunks,
            l.sessions,
            l.datagrams,
            l.duplicates
        );
    }
    if let Some(q) = quality_note(&r.notes) {
        say!(
            "  quality (signed by the publisher): mean cosine {} to the fine-tune on {} sentences of {} (base alone {})",
            q["delta"]["mean"],
            q["sentences"],
            q["corpus"].as_str().unwrap_or("?"),
            q["base"]["mean"]
        );
    }
}
