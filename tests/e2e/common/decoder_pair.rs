//! The real decoder pair of scripts/make-decoder-pair.sh (a small Llama base pre-trained on Wikipedia
//! text and a full chat fine-tune of it with two added special tokens), made once and kept in
//! [`decoder_pair_dir`]. A test that needs it and cannot have it fails, or is skipped, counted, with
//! `ZDN_TEST_SKIP=decoder-pair` ([`Need::DecoderPair`]).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use zdn::decoder::folder::FolderWeights;
use zdn_protocol::safetensors::{encode_header, TensorLayout};
use zdn_test_support::require::{decoder_pair_dir, require, Need};

use super::printed;

#[derive(Debug, Clone)]
pub struct DecoderPair {
    /// Which recorded set of outputs the script made (the same recipe gives other weights on
    /// other CPU families; scripts/make-decoder-pair.sh records each).
    pub set: String,
    /// Model folders (sharded: 3 and 5 files).
    pub base: PathBuf,
    pub finetuned: PathBuf,
    /// Held-out and calibration conversations (JSON lines).
    pub heldout: PathBuf,
    pub calibration: PathBuf,
    /// What transformers computed on this pair (tests/vectors/decoder_reference*.json of its set
    /// holds a copy).
    pub reference: PathBuf,
}

/// The pair for `test`: found made, or made (about 15 minutes the first time; needs CPython 3.11
/// and PyPI). `None` only when `ZDN_TEST_SKIP` lists `decoder-pair` and neither is here (the skip
/// is logged and counted); without that switch a missing pair fails the test.
pub fn decoder_pair(test: &str) -> Option<DecoderPair> {
    if !require(Need::DecoderPair, test) {
        return None;
    }
    // The outcome is kept, a failure too: the tests after the first do not each spend the
    // script's minutes to fail the same way.
    static PAIR: OnceLock<Result<DecoderPair, String>> = OnceLock::new();
    match PAIR.get_or_init(make_or_find) {
        Ok(pair) => Some(pair.clone()),
        Err(why) => panic!("{why}"),
    }
}

fn make_or_find() -> Result<DecoderPair, String> {
    let script = format!(
        "{}/../scripts/make-decoder-pair.sh",
        env!("CARGO_MANIFEST_DIR")
    );
    let out = Command::new("bash")
        .arg(&script)
        .arg(decoder_pair_dir())
        .output()
        .unwrap();
    if !out.status.success() {
        return Err(format!(
            "scripts/make-decoder-pair.sh could not make the decoder pair (it needs \
             python3.11 and PyPI; see its header):\n{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let stdout = String::from_utf8(out.stdout).unwrap();
    let get = |k: &str| {
        printed(&stdout, k)
            .unwrap_or_else(|| panic!("make-decoder-pair.sh printed no {k} line: {stdout}"))
    };
    Ok(DecoderPair {
        set: get("set").to_string(),
        base: get("base").into(),
        finetuned: get("finetuned").into(),
        heldout: get("heldout").into(),
        calibration: get("calibration").into(),
        reference: get("reference").into(),
    })
}

/// Copies a model folder into `out` with its shards merged into one `model.safetensors` (same
/// tensors, same bytes, the folder's order): what `zdn delta encode` takes today.
pub fn merge_shards(folder: &Path, out: &Path) {
    write_merged(folder, None, out);
}

/// The base folder merged into one file with the fine-tune's grown tensors (a leading dimension
/// that grew: embed_tokens and lm_head of a fine-tune that added tokens) copied in exactly. A delta
/// cannot yet encode a grown tensor, so the pair is measured with deltas made against this.
/// Returns the bytes of the tensors copied in.
pub fn graft_grown(base: &Path, finetuned: &Path, out: &Path) -> u64 {
    let fine = FolderWeights::open(finetuned).unwrap();
    write_merged(base, Some(&fine), out)
}

fn write_merged(folder: &Path, grown_from: Option<&FolderWeights>, out: &Path) -> u64 {
    std::fs::create_dir_all(out).unwrap();
    let f = FolderWeights::open(folder).unwrap();
    let mut grafted = 0;
    let tensors: Vec<(String, zdn_protocol::bitdelta::TensorData<'_>)> = f
        .names()
        .iter()
        .map(|n| {
            let own = f.data(n).unwrap();
            match grown_from.and_then(|g| g.data(n)) {
                Some(g) if g.shape != own.shape => {
                    grafted += g.bytes.len() as u64;
                    (n.clone(), g)
                }
                _ => (n.clone(), own),
            }
        })
        .collect();
    let layouts: Vec<TensorLayout> = tensors
        .iter()
        .map(|(n, d)| TensorLayout {
            name: n.clone(),
            dtype: d.dtype,
            shape: d.shape.to_vec(),
        })
        .collect();
    let (mut file, _) = encode_header(&layouts, &Default::default()).unwrap();
    for (_, d) in &tensors {
        file.extend_from_slice(d.bytes);
    }
    std::fs::write(out.join("model.safetensors"), file).unwrap();
    for e in std::fs::read_dir(folder).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_str().unwrap().to_owned();
        let meta = name.ends_with(".json") && !name.starts_with("model.safetensors");
        if meta || name.ends_with(".jinja") {
            std::fs::copy(&p, out.join(name)).unwrap();
        }
    }
    grafted
}
