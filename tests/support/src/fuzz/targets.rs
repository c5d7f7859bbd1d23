//! The parsers under test, each with its seeds and what it must hold for any input: no panic (the
//! runner catches one), and, where the encoding is canonical, an accepted input encodes back to
//! exactly itself.

use zdn_protocol::bitdelta::decode_model;
use zdn_protocol::manifest;
use zdn_protocol::paced::{
    PacedRequest, PacedResponse, ReceiverSeal, SenderSeal, ToReceiver, ToSender,
};
use zdn_protocol::soup::Recipe;
use zdn_protocol::wire::{Announcement, Request, Response};
use zdn_protocol::{chunk, safetensors};

use super::seeds;

/// `Ok(true)`: accepted; `Ok(false)`: refused (as it should be, mostly); `Err`: a broken rule.
pub type Check = fn(&[u8]) -> Result<bool, String>;

pub struct Target {
    pub name: &'static str,
    pub seeds: fn() -> Vec<Vec<u8>>,
    pub check: Check,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

/// An accepted input must be what encoding its value gives.
fn canonical<T>(
    input: &[u8],
    decoded: Result<T, impl std::fmt::Debug>,
    encode: impl Fn(&T) -> Vec<u8>,
) -> Result<bool, String> {
    match decoded {
        Err(_) => Ok(false),
        Ok(v) if encode(&v) == input => Ok(true),
        Ok(_) => {
            Err("accepted, but encodes back to other bytes (two encodings of one value)".into())
        }
    }
}

pub fn targets() -> Vec<Target> {
    vec![
        Target {
            name: "manifest",
            seeds: || {
                seeds::manifests()
                    .iter()
                    .map(|m| m.as_bytes().to_vec())
                    .collect()
            },
            check: |b| canonical(b, manifest::decode(b), |m| m.as_bytes().to_vec()),
        },
        Target {
            name: "manifest-resigned",
            seeds: || {
                seeds::manifests()
                    .iter()
                    .map(|m| m.as_bytes()[..m.as_bytes().len() - 64].to_vec())
                    .collect()
            },
            check: |body| {
                let signed = resign(body);
                canonical(&signed, manifest::decode(&signed), |m| {
                    m.as_bytes().to_vec()
                })
            },
        },
        Target {
            name: "wire-request",
            seeds: seeds::requests,
            check: |b| canonical(b, Request::decode(b), Request::encode),
        },
        Target {
            name: "wire-response",
            seeds: seeds::responses,
            check: |b| canonical(b, Response::decode(b), Response::encode),
        },
        Target {
            name: "wire-announcement",
            seeds: seeds::announcements,
            check: |b| {
                canonical(b, Announcement::decode(b), |a| {
                    a.encode().unwrap_or_default()
                })
            },
        },
        Target {
            name: "paced-request",
            seeds: seeds::paced_requests,
            check: |b| canonical(b, PacedRequest::decode(b), PacedRequest::encode),
        },
        Target {
            name: "paced-response",
            seeds: seeds::paced_responses,
            check: |b| canonical(b, PacedResponse::decode(b), PacedResponse::encode),
        },
        Target {
            name: "paced-to-sender",
            seeds: || seeds::to_sender().iter().map(ToSender::encode).collect(),
            check: |b| canonical(b, ToSender::decode(b), ToSender::encode),
        },
        Target {
            name: "paced-to-receiver",
            seeds: || {
                seeds::to_receiver()
                    .iter()
                    .map(ToReceiver::encode)
                    .collect()
            },
            check: |b| canonical(b, ToReceiver::decode(b), ToReceiver::encode),
        },
        Target {
            name: "paced-sealed",
            seeds: || [seeds::sealed_to_sender(), seeds::sealed_to_receiver()].concat(),
            check: sealed,
        },
        Target {
            name: "bitdelta",
            seeds: seeds::bitdeltas,
            check: |b| {
                let m = seeds::bitdelta_model();
                Ok(decode_model(b, &seeds::base_tensors(&m)).is_ok())
            },
        },
        Target {
            name: "safetensors-header",
            seeds: || vec![seeds::safetensors()],
            check: |b| Ok(safetensors::parse(b).is_ok()),
        },
        Target {
            name: "bundle",
            seeds: seeds::bundles,
            check: |b| {
                let store = zdn_node::store::ObjectStore::in_memory();
                let mut input = b;
                Ok(zdn_node::bundle::import(&store, &mut input, &seeds::trust_any()).is_ok())
            },
        },
        Target {
            name: "bundle-rehashed",
            seeds: || {
                seeds::bundles()
                    .iter()
                    .map(|b| b[..b.len() - END_RECORD].to_vec())
                    .collect()
            },
            check: |body| {
                let b = with_end(body);
                let store = zdn_node::store::ObjectStore::in_memory();
                let mut input = &b[..];
                Ok(zdn_node::bundle::import(&store, &mut input, &seeds::trust_any()).is_ok())
            },
        },
        Target {
            name: "soup-recipe",
            seeds: seeds::recipes,
            check: |b| canonical(b, Recipe::decode(b), Recipe::encode),
        },
        Target {
            name: "shard-index",
            seeds: seeds::shard_indexes,
            check: |b| Ok(zdn_protocol::folder::shard_index::ShardIndex::parse(b).is_ok()),
        },
        Target {
            name: "folder-path",
            seeds: seeds::folder_paths,
            check: |b| {
                let Ok(p) = std::str::from_utf8(b) else {
                    return Ok(false);
                };
                let ok = zdn_protocol::folder::path::check_path(p).is_ok();
                // An accepted path never climbs out of its folder nor names it absolutely.
                if ok && (p.starts_with('/') || p.split('/').any(|c| c == ".." || c.is_empty())) {
                    return Err(format!("accepted the escaping path {p:?}"));
                }
                Ok(ok)
            },
        },
        Target {
            name: "folder-patch",
            seeds: seeds::folder_patches,
            // `[base length u16 | file length u16 | base | patch]`: any decoded file has exactly
            // the length asked for.
            check: |b| {
                use zdn_protocol::folder::patch;
                let (Some(head), Some(rest)) = (b.get(..4), b.get(4..)) else {
                    return Ok(false);
                };
                let base_len =
                    usize::from(u16::from_le_bytes([head[0], head[1]])) % (rest.len() + 1);
                let want = u64::from(u16::from_le_bytes([head[2], head[3]]));
                let (base, p) = rest.split_at(base_len);
                match patch::decode(base, p, want) {
                    Err(_) => Ok(false),
                    Ok(out) if out.len() as u64 == want => Ok(true),
                    Ok(out) => Err(format!("asked for {want} bytes, rebuilt {}", out.len())),
                }
            },
        },
        Target {
            name: "folder-delta-layout",
            seeds: seeds::folder_delta_layouts,
            check: |b| {
                use zdn_protocol::folder::delta::FolderDelta;
                match FolderDelta::parse(b) {
                    Err(_) => Ok(false),
                    // What zdn writes of an accepted layout reads back as the same layout.
                    Ok(d) => match FolderDelta::parse(&d.to_bytes()) {
                        Ok(again) if again == d => Ok(true),
                        _ => Err("an accepted layout does not read back from its own bytes".into()),
                    },
                }
            },
        },
        Target {
            name: "shard-header",
            seeds: seeds::shard_headers,
            check: |b| {
                use zdn_protocol::folder::delta::{file_len, parse_header};
                match parse_header("x.safetensors", b) {
                    Err(_) => Ok(false),
                    // Accepted: its tensors tile the data section from the header's end.
                    Ok(h) => {
                        let data: u64 = h.tensors.iter().map(|t| t.range.len() as u64).sum();
                        if file_len(&h) == b.len() as u64 + data {
                            Ok(true)
                        } else {
                            Err("an accepted header's tensors do not tile its data".into())
                        }
                    }
                }
            },
        },
        Target {
            name: "adapter-config",
            seeds: seeds::adapter_configs,
            check: |b| Ok(zdn_protocol::lora::AdapterConfig::parse(b).is_ok()),
        },
        Target {
            name: "chunk-codecs",
            seeds: seeds::chunks,
            check: |b| {
                let Some((r, stored)) = seeds::chunk_ref(b) else {
                    return Ok(false);
                };
                match chunk::decode(stored, &r) {
                    Ok(out) if out.len() == r.len as usize => Ok(true),
                    Ok(out) => Err(format!("decoded {} bytes, declared {}", out.len(), r.len)),
                    Err(_) => Ok(false),
                }
            },
        },
    ]
}

/// A sealed datagram opens only if it is one the key's holder sealed: any other that opens is a
/// forgery. Each input meets fresh seals, so a replayed seed opens once.
fn sealed(b: &[u8]) -> Result<bool, String> {
    let mut d = b.to_vec();
    let at_sender = SenderSeal::new(&seeds::SEAL_KEY).open(&mut d).is_ok();
    let mut d = b.to_vec();
    let at_receiver = ReceiverSeal::new(&seeds::SEAL_KEY).open(&mut d).is_ok();
    if !(at_sender || at_receiver) {
        return Ok(false);
    }
    let genuine = seeds::sealed_to_sender()
        .iter()
        .chain(&seeds::sealed_to_receiver())
        .any(|s| s == b);
    if genuine {
        Ok(true)
    } else {
        Err("a datagram nobody sealed opened".into())
    }
}

/// What a manifest's signature covers: this context, then the bytes before the signature
/// (docs/spec/manifest.md).
const SIGNING_CONTEXT: &[u8] = b"zdn manifest v1\0";

/// `body` signed by the seeds' publisher: mutations of a manifest's fields then reach every
/// check after the signature's, and an accepted one must still be canonical.
fn resign(body: &[u8]) -> Vec<u8> {
    let mut msg = SIGNING_CONTEXT.to_vec();
    msg.extend_from_slice(body);
    let sig = seeds::publisher().sign(&msg);
    let mut out = body.to_vec();
    out.extend_from_slice(&sig);
    out
}

/// A bundle's end record: tag, length 40, record count, BLAKE3 of everything before it.
const END_RECORD: usize = 1 + 4 + 8 + 32;

/// `body` (a bundle's records) with a correct end record, so that mutations reach the checks of
/// what the records hold instead of stopping at the end record's hash.
fn with_end(body: &[u8]) -> Vec<u8> {
    // Records after the 8-byte header: tag u8 | len u32 LE | payload.
    let mut count = 0u64;
    let mut at = 8usize;
    while let Some(len) = body.get(at + 1..at + 5) {
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        count += 1;
        at = at.saturating_add(5).saturating_add(len);
    }
    let mut out = body.to_vec();
    out.push(255);
    out.extend_from_slice(&40u32.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(blake3::hash(body).as_bytes());
    out
}
