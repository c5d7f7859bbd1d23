//! Valid inputs to start from, built in-process with zdn's own writers (deterministic: the same
//! seeds every run; `zdn-fuzz --write-seeds DIR` writes them out).

use std::collections::BTreeMap;

use zdn_node::store::{AddOptions, ObjectStore, TrustPolicy};
use zdn_protocol::bitdelta::{
    encode_model, EmbeddingPolicy, EncodeOptions, Granularity, Metadata, ModelTensor, Selection,
    TensorData,
};
use zdn_protocol::chunk::{ChunkRef, Codec};
use zdn_protocol::glob::Glob;
use zdn_protocol::manifest::{Kind, PublisherKey, SignedManifest};
use zdn_protocol::paced::{
    ByteRanges, EndReason, HeldChunk, PacedRequest, PacedResponse, ReceiverSeal, SenderSeal,
    SessionChunk, ToReceiver, ToSender,
};
use zdn_protocol::safetensors::{encode_header, TensorLayout};
use zdn_protocol::soup::{Component, Recipe};
use zdn_protocol::wire::{Announcement, ChunkBitmap, Request, Response};
use zdn_protocol::{DType, Hash};

/// The session key of the sealed-datagram seeds.
pub const SEAL_KEY: [u8; 32] = [0x5e; 32];

pub fn publisher() -> PublisherKey {
    PublisherKey::from_seed(&[9; 32])
}

fn floats(n: usize, k: f32) -> Vec<u8> {
    (0..n)
        .flat_map(|i| (((i * 37 % 101) as f32 - 50.0) / 64.0 * k).to_le_bytes())
        .collect()
}

/// One tensor of the seed model: name, shape, base bytes, fine-tune bytes.
pub type SeedTensor = (&'static str, Vec<u64>, Vec<u8>, Vec<u8>);

/// A small base model and a fine-tune of it.
fn model() -> Vec<SeedTensor> {
    vec![
        ("w.weight", vec![5, 13], floats(65, 1.0), floats(65, 1.01)),
        ("bias", vec![13], floats(13, 0.5), floats(13, 0.75)),
        ("embed", vec![3, 4], floats(12, 2.0), floats(12, 2.5)),
    ]
}

/// The safetensors file of the model's base tensors.
pub fn safetensors() -> Vec<u8> {
    let m = model();
    let layouts: Vec<TensorLayout> = m
        .iter()
        .map(|(name, shape, _, _)| TensorLayout {
            name: name.to_string(),
            dtype: DType::F32,
            shape: shape.clone(),
        })
        .collect();
    let mut meta = BTreeMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    let Ok((mut file, _)) = encode_header(&layouts, &meta) else {
        return Vec::new();
    };
    for (_, _, base, _) in &m {
        file.extend_from_slice(base);
    }
    file
}

/// The base tensors, as a decoder is given them.
pub fn base_tensors<'a>(m: &'a [SeedTensor]) -> Vec<ModelTensor<'a>> {
    m.iter()
        .filter_map(|(name, shape, base, _)| {
            Some(ModelTensor {
                name,
                data: TensorData::new(DType::F32, shape, base)?,
            })
        })
        .collect()
}

pub fn bitdelta_model() -> Vec<SeedTensor> {
    model()
}

/// `.bitdelta` files of the model, at 1, 2 and 4 bits, per tensor and per row.
pub fn bitdeltas() -> Vec<Vec<u8>> {
    let m = model();
    let base = base_tensors(&m);
    let fine: Vec<ModelTensor<'_>> = m
        .iter()
        .filter_map(|(name, shape, _, fine)| {
            Some(ModelTensor {
                name,
                data: TensorData::new(DType::F32, shape, fine)?,
            })
        })
        .collect();
    let selection = Selection {
        include: vec![Glob::new("*.weight")],
        exclude: Vec::new(),
        embeddings: EmbeddingPolicy::Base,
    };
    let mut out = Vec::new();
    for (bits, granularity) in [
        (1u8, Granularity::Tensor),
        (2, Granularity::Row),
        (4, Granularity::Tensor),
    ] {
        let meta = Metadata {
            base_hash: Hash::ZERO,
            n_params: 0,
            n_quantized: 0,
            bits,
            granularity,
            clip_sigma: 0.0,
            embeddings: 0,
            model_name: "fuzz".into(),
        };
        let mut opts = EncodeOptions::default();
        opts.spec.bits = u32::from(bits);
        opts.spec.granularity = granularity;
        if let Ok(f) = encode_model(meta, &base, &fine, &selection, &opts) {
            out.push(f);
        }
    }
    out
}

/// Signed manifests: the base model, a delta of it, and a soup recipe of it.
pub fn manifests() -> Vec<SignedManifest> {
    let store = ObjectStore::in_memory();
    let key = publisher();
    let mut out = Vec::new();
    let mut opts = AddOptions::new(Kind::Base, "base");
    opts.chunk_size = 256;
    let Ok((base, _)) = store.add(&safetensors(), &opts, &key) else {
        return out;
    };
    let mut d = AddOptions::new(Kind::Delta, "fine");
    d.base = Some(base.hash());
    d.chunk_size = 256;
    d.extra = vec![("quality".into(), "{\"mean\":0.99}".into())];
    if let Some(delta) = bitdeltas().first() {
        if let Ok((m, _)) = store.add(delta, &d, &key) {
            out.push(m);
        }
    }
    out.insert(0, base);
    // A model folder (manifest v2 with a file table): the format's golden vector.
    if let Ok(folder) = zdn_protocol::manifest::decode(FOLDER_MANIFEST) {
        out.push(folder);
    }
    out
}

/// The golden folder manifest of protocol/tests/vectors.
const FOLDER_MANIFEST: &[u8] = include_bytes!("../../../../protocol/tests/vectors/folder.manifest");

/// Shard indexes (`model.safetensors.index.json`): the golden folder's, and a two-shard one.
pub fn shard_indexes() -> Vec<Vec<u8>> {
    vec![
        include_bytes!("../../../../protocol/tests/vectors/folder/model.safetensors.index.json")
            .to_vec(),
        br#"{"metadata":{},"weight_map":{"a.weight":"model-00001-of-00002.safetensors","b":"model-00002-of-00002.safetensors"}}"#.to_vec(),
    ]
}

/// Side-file patches as the `folder-patch` target reads them: base length, file length, the base,
/// the patch (made by zdn from a base and a file with a few bytes changed).
pub fn folder_patches() -> Vec<Vec<u8>> {
    let base = b"{\"added_tokens\": [], \"vocab\": {\"a\": 0, \"b\": 1, \"c\": 2}}".to_vec();
    let file =
        b"{\"added_tokens\": [\"<|user|>\"], \"vocab\": {\"a\": 0, \"b\": 1, \"c\": 2}}".to_vec();
    let mut out = Vec::new();
    for (base, file) in [
        (&base[..], &file[..]),
        (&[][..], &file[..]),
        (&base[..], &[][..]),
    ] {
        let p = zdn_protocol::folder::patch::encode(base, file).unwrap_or_default();
        let mut v = Vec::new();
        v.extend_from_slice(&(base.len() as u16).to_le_bytes());
        v.extend_from_slice(&(file.len() as u16).to_le_bytes());
        v.extend_from_slice(base);
        v.extend_from_slice(&p);
        out.push(v);
    }
    out
}

/// `zdn-delta.json` layouts of folder deltas (every source, grown and exact rows).
pub fn folder_delta_layouts() -> Vec<Vec<u8>> {
    let h = "ab".repeat(32);
    let patched = format!(
        r#"{{"format":"zdn-folder-delta/2","files":[
  {{"path":"model.safetensors","from":"tensors","len":100}},
  {{"path":"tokenizer.json","from":"patched","len":7,"blake3":"{h}","base_blake3":"{h}"}}]}}"#
    );
    vec![patched.into_bytes(), format!(
        r#"{{"format":"zdn-folder-delta/1","files":[
  {{"path":"config.json","from":"carried","len":10,"blake3":"{h}"}},
  {{"path":"model-00001-of-00002.safetensors","from":"tensors","len":100}},
  {{"path":"tokenizer.json","from":"base","len":7,"blake3":"{h}"}}],
 "grown":[{{"name":"lm_head.weight","rows":"lm_head.weight.zdn_new_rows"}}],
 "exact_rows":[{{"name":"lm_head.weight","rows":"lm_head.weight.zdn_exact_rows","indices":[1,2,7]}}]}}"#
    )
    .into_bytes()]
}

/// Shard headers kept apart from their data (a folder delta's `headers/…` members).
pub fn shard_headers() -> Vec<Vec<u8>> {
    let t = |name: &str, dtype, shape: Vec<u64>| TensorLayout {
        name: name.into(),
        dtype,
        shape,
    };
    let layouts = [
        t("model.embed_tokens.weight", DType::BF16, vec![8, 4]),
        t("model.norm.weight", DType::F32, vec![4]),
    ];
    let meta = [("format".to_string(), "pt".to_string())]
        .into_iter()
        .collect();
    encode_header(&layouts, &meta)
        .map(|h| vec![h.0])
        .unwrap_or_default()
}

/// PEFT `adapter_config.json` files as trainers write them.
pub fn adapter_configs() -> Vec<Vec<u8>> {
    vec![
        br#"{"peft_type":"LORA","task_type":"CAUSAL_LM","r":16,"lora_alpha":32,"lora_dropout":0.05,"bias":"none","fan_in_fan_out":false,"use_rslora":false,"target_modules":["q_proj","k_proj","v_proj","o_proj"],"base_model_name_or_path":"meta-llama/Llama-2-7b-hf","modules_to_save":null,"rank_pattern":{},"alpha_pattern":{}}"#.to_vec(),
        br#"{"peft_type":"LORA","r":8,"lora_alpha":8,"target_modules":"q_proj|v_proj","use_rslora":true}"#.to_vec(),
    ]
}

/// Folder member paths, as a folder manifest's file table or `zdn add DIR` meets them.
pub fn folder_paths() -> Vec<Vec<u8>> {
    [
        "config.json",
        "tokenizer/tokenizer.json",
        "model-00001-of-00002.safetensors",
        "a/b/c.jinja",
    ]
    .iter()
    .map(|p| p.as_bytes().to_vec())
    .collect()
}

/// Bundles (`zdn export` files) of those objects.
pub fn bundles() -> Vec<Vec<u8>> {
    let store = ObjectStore::in_memory();
    let key = publisher();
    let mut opts = AddOptions::new(Kind::Base, "base");
    opts.chunk_size = 256;
    let Ok((base, _)) = store.add(&safetensors(), &opts, &key) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut b = Vec::new();
    if zdn_node::bundle::export(&store, &[base.hash()], true, &mut b).is_ok() {
        out.push(b);
    }
    out
}

pub fn trust_any() -> TrustPolicy {
    TrustPolicy {
        trusted: Vec::new(),
        any: true,
    }
}

pub fn requests() -> Vec<Vec<u8>> {
    let h = Hash::of(b"x");
    [
        Request::GetManifest(h),
        Request::GetChunk {
            object: h,
            id: Hash::of(b"y"),
        },
        Request::GetHave(h),
        Request::GetAnnouncement(h),
        Request::GetRecent {
            since: 1_700_000_000,
        },
    ]
    .iter()
    .map(Request::encode)
    .collect()
}

pub fn responses() -> Vec<Vec<u8>> {
    let h = Hash::of(b"x");
    let mut held = ChunkBitmap::new(13);
    held.set(3);
    held.set(12);
    let manifest = manifests()
        .first()
        .map(|m| m.as_bytes().to_vec())
        .unwrap_or_default();
    [
        Response::Manifest(manifest),
        Response::Chunk {
            id: h,
            stored: vec![1, 2, 3, 4],
        },
        Response::Have { object: h, held },
        Response::NotFound(h),
        Response::Busy {
            retry_after_ms: 1000,
        },
        Response::Announcement(announcements().first().cloned().unwrap_or_default()),
        Response::Recent(announcements()),
    ]
    .iter()
    .map(Response::encode)
    .collect()
}

pub fn announcements() -> Vec<Vec<u8>> {
    manifests()
        .iter()
        .filter_map(|m| Announcement::signed(m, &publisher()).ok()?.encode().ok())
        .collect()
}

pub fn paced_requests() -> Vec<Vec<u8>> {
    let mut wanted = ChunkBitmap::new(20);
    wanted.set(0);
    wanted.set(7);
    wanted.set(19);
    let request = |rate_bps, held| PacedRequest {
        object: Hash::of(b"x"),
        rate_bps,
        payload: 1444,
        udp_port: 40_001,
        wanted: wanted.clone(),
        held,
    };
    // Two partly held chunks: one range, and two with a gap between them.
    let mut one = ByteRanges::new();
    one.insert(0, 1444);
    let mut two = ByteRanges::new();
    two.insert(0, 2888);
    two.insert(4332, 5000);
    let held = vec![
        HeldChunk {
            chunk: 7,
            ranges: one,
        },
        HeldChunk {
            chunk: 19,
            ranges: two,
        },
    ];
    vec![
        request(1_000_000, Vec::new()).encode(),
        // No rate stated (the sender finds it), and held ranges to skip.
        request(0, held).encode(),
    ]
}

pub fn paced_responses() -> Vec<Vec<u8>> {
    let chunks = vec![
        SessionChunk {
            chunk: 0,
            stored_len: 300,
            resumed: false,
        },
        SessionChunk {
            chunk: 7,
            stored_len: 65536,
            resumed: true,
        },
    ];
    [
        PacedResponse::Ready {
            udp_port: 4801,
            payload: 1448,
            key: SEAL_KEY,
            chunks,
        },
        PacedResponse::NotFound(Hash::of(b"x")),
        PacedResponse::Busy {
            retry_after_ms: 5000,
        },
        PacedResponse::Ended(EndReason::Budget),
        PacedResponse::Ended(EndReason::Replaced),
    ]
    .iter()
    .map(PacedResponse::encode)
    .collect()
}

pub fn to_sender() -> Vec<ToSender> {
    vec![
        ToSender::Hello,
        ToSender::Ack {
            rate_bps: 8_000_000,
            cumulative: 17,
            queue_us: 15_000,
            echo_sent_us: 4_000_123,
            echo_recv_us: 4_290_456,
            received: 60,
            ranges: vec![(19, 6), (40, 2)],
        },
        ToSender::Done,
        ToSender::Response { nonce: [3; 8] },
        ToSender::Probe,
    ]
}

pub fn to_receiver() -> Vec<ToReceiver> {
    vec![ToReceiver::Challenge { nonce: [4; 8] }]
}

/// Datagrams sealed under [`SEAL_KEY`], receiver to sender.
pub fn sealed_to_sender() -> Vec<Vec<u8>> {
    let mut seal = ReceiverSeal::new(&SEAL_KEY);
    to_sender()
        .iter()
        .map(|m| {
            let mut out = Vec::new();
            seal.seal(m, &mut out);
            out
        })
        .collect()
}

/// Datagrams sealed under [`SEAL_KEY`], sender to receiver: data and a challenge.
pub fn sealed_to_receiver() -> Vec<Vec<u8>> {
    let mut seal = SenderSeal::new(&SEAL_KEY);
    let mut data = Vec::new();
    seal.seal_data(5, 1_000_000, &[7u8; 100], &mut data);
    let mut challenge = Vec::new();
    seal.seal_control(&ToReceiver::Challenge { nonce: [1; 8] }, &mut challenge);
    vec![data, challenge]
}

pub fn recipes() -> Vec<Vec<u8>> {
    let components = vec![
        Component {
            delta: Hash::of(b"a"),
            weight: 0.5,
        },
        Component {
            delta: Hash::of(b"b"),
            weight: 0.25,
        },
        Component {
            delta: Hash::of(b"c"),
            weight: -0.125,
        },
    ];
    Recipe::new(Hash::of(b"base"), 1, Granularity::Tensor, components)
        .map(|r| vec![r.encode()])
        .unwrap_or_default()
}

/// Stored chunks as the chunk decoder sees them: one byte naming the codec, the uncompressed
/// length (u32 LE), then the stored bytes.
pub fn chunks() -> Vec<Vec<u8>> {
    let data = floats(512, 1.0);
    let mut out = Vec::new();
    let (codec, stored, _) = zdn_protocol::chunk::encode(&data, 3);
    out.push(chunk_input(codec, data.len() as u32, &stored));
    let (codec, stored, _) = zdn_protocol::chunk::encode_elements(&data, 3, Some(DType::F32));
    out.push(chunk_input(codec, data.len() as u32, &stored));
    out.push(chunk_input(Codec::Raw, data.len() as u32, &data));
    out
}

pub fn chunk_input(codec: Codec, len: u32, stored: &[u8]) -> Vec<u8> {
    let mut v = vec![codec.code()];
    v.extend_from_slice(&len.to_le_bytes());
    v.extend_from_slice(stored);
    v
}

/// The reference a chunk input is checked against: its own hash (so the hash check passes and
/// the decoder is reached), codec and length from its head.
pub fn chunk_ref(input: &[u8]) -> Option<(ChunkRef, &[u8])> {
    let codec = Codec::from_code(*input.first()?)?;
    let len = u32::from_le_bytes(input.get(1..5)?.try_into().ok()?);
    let stored = &input[5..];
    Some((
        ChunkRef {
            id: Hash::of(stored),
            offset: 0,
            len,
            codec,
        },
        stored,
    ))
}
