//! The decoder measure on a real decoder pair (scripts/make-decoder-pair.sh: a small Llama base and a full chat
//! fine-tune of it that adds two special tokens): the candle Llama forward pass against transformers'
//! own LlamaForCausalLM, the chat template against transformers' rendering, and `zdn eval`'s decoder
//! measure on held-out conversations. Every test needs the pair (see `common::decoder_pair`).

use std::path::Path;

use crate::common::decoder_pair::{decoder_pair, graft_grown, merge_shards, DecoderPair};
use crate::common::*;
use candle_core::Device;
use serde_json::Value;
use zdn::decoder::chat::ChatMessage;
use zdn::decoder::config::LlamaConfig;
use zdn::decoder::eval::{evaluate, AppliedWeights, DecoderEvalJob};
use zdn::decoder::folder::FolderWeights;
use zdn::decoder::llama::{DecoderBatch, LlamaModel, LlamaWeights};
use zdn::decoder::tokenizer::DecoderTokenizer;

/// Largest difference allowed between our f32 logits and transformers' f32 logits (both computed
/// from the same bf16 weights; the difference is summation order only).
const LOGIT_TOLERANCE: f32 = 1e-3;

/// The committed reference of the set of outputs the pair was made as.
fn reference(pair: &DecoderPair) -> Value {
    let committed = match pair.set.as_str() {
        "xeon" => include_str!("../vectors/decoder_reference.json"),
        "epyc" => include_str!("../vectors/decoder_reference-epyc.json"),
        other => panic!("no committed reference for the decoder pair's set {other:?}"),
    };
    serde_json::from_str(committed).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// The committed reference is the one made with this pair (same weights, same numbers).
#[test]
fn the_committed_reference_is_this_pairs() {
    let Some(pair) = decoder_pair("decoder::the_committed_reference_is_this_pairs") else {
        return;
    };
    let made: Value =
        serde_json::from_str(&std::fs::read_to_string(&pair.reference).unwrap()).unwrap();
    assert_eq!(
        made,
        reference(&pair),
        "the committed reference of set {:?} differs from {} (see scripts/make-decoder-pair.sh)",
        pair.set,
        pair.reference.display()
    );
}

/// Token ids, chat rendering and logits of both models agree with transformers (ids and argmax
/// exactly, logits and log-sum-exp within LOGIT_TOLERANCE), with all cases in one padded batch.
#[test]
fn forward_matches_transformers() {
    let Some(pair) = decoder_pair("decoder::forward_matches_transformers") else {
        return;
    };
    let r = reference(&pair);
    let mut worst = 0f32;
    for (which, dir) in [("base", &pair.base), ("finetuned", &pair.finetuned)] {
        let m = &r["models"][which];
        let cfg = LlamaConfig::from_file(&dir.join("config.json")).unwrap();
        assert_eq!(cfg.vocab_size as u64, m["vocab_size"].as_u64().unwrap());
        let tok = DecoderTokenizer::open(dir).unwrap();
        let folder = FolderWeights::open(dir).unwrap();
        assert_eq!(
            folder.shard_names.len(),
            if which == "base" { 3 } else { 5 },
            "{which} shards"
        );
        let w = LlamaWeights::load(&folder, &cfg, &Device::Cpu).unwrap();
        let cases = m["cases"].as_array().unwrap();
        let mut seqs = Vec::new();
        for c in cases {
            let want = ids(&c["ids"]);
            let got = match c.get("messages") {
                Some(msgs) => {
                    let msgs: Vec<ChatMessage> = serde_json::from_value(msgs.clone()).unwrap();
                    let gen = c["add_generation_prompt"].as_bool().unwrap();
                    assert_eq!(
                        tok.render_chat(&msgs, gen).unwrap(),
                        c["text"].as_str().unwrap(),
                        "chat template rendering"
                    );
                    tok.encode_chat(&msgs, gen).unwrap()
                }
                None => tok.encode(c["text"].as_str().unwrap(), true).unwrap(),
            };
            assert_eq!(got, want, "{which}: token ids of {:?}", c["text"]);
            seqs.push(got);
        }
        let batch = DecoderBatch::new(&seqs, 0, &Device::Cpu).unwrap();
        let logits = LlamaModel::new(cfg.clone())
            .logits(&w, &batch)
            .unwrap()
            .to_vec3::<f32>()
            .unwrap();
        for (i, c) in cases.iter().enumerate() {
            let rows = &logits[i];
            let argmax: Vec<u32> = rows[..seqs[i].len()]
                .iter()
                .map(|row| {
                    let mut best = 0;
                    for (j, &x) in row.iter().enumerate() {
                        if x > row[best] {
                            best = j;
                        }
                    }
                    best as u32
                })
                .collect();
            assert_eq!(argmax, ids(&c["argmax"]), "{which} case {i}: top-1 tokens");
            for (p, want) in floats(&c["logsumexp"]).iter().enumerate() {
                let m = rows[p].iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
                let lse = m + rows[p].iter().map(|x| (x - m).exp()).sum::<f32>().ln();
                worst = worst.max((lse - want).abs());
                assert!(
                    (lse - want).abs() < LOGIT_TOLERANCE,
                    "{which} case {i} position {p}: log-sum-exp {lse} vs transformers {want}"
                );
            }
            for (key, from_end) in [("logits_first16", false), ("logits_last4", true)] {
                for (p, want) in c[key].as_object().unwrap() {
                    let p: usize = p.parse().unwrap();
                    let want = floats(want);
                    let start = if from_end {
                        cfg.vocab_size - want.len()
                    } else {
                        0
                    };
                    for (j, w) in want.iter().enumerate() {
                        let got = rows[p][start + j];
                        worst = worst.max((got - w).abs());
                        assert!(
                            (got - w).abs() < LOGIT_TOLERANCE,
                            "{which} case {i} position {p} logit {}: {got} vs transformers {w}",
                            start + j
                        );
                    }
                }
            }
        }
    }
    println!("largest logit difference to transformers: {worst:.2e}");
}

/// `zdn eval --json` of a decoder delta applied to `onto` (the grafted base), the base the floor.
fn eval(pair: &DecoderPair, delta: &Path, onto: &Path, extra: &[&str]) -> Value {
    let mut args = vec![
        "eval",
        "--base",
        s(&pair.base),
        "--finetuned",
        s(&pair.finetuned),
        "--delta",
        s(delta),
        "--delta-base",
        s(onto),
        "--corpus",
        s(&pair.heldout),
        "--json",
    ];
    args.extend_from_slice(extra);
    json(&zdn_ok(&args))
}

/// The grown tensors of the pair: copied in exactly (see `graft_grown`), so stored as unchanged.
const GROWN: [&str; 2] = ["model.embed_tokens.weight", "lm_head.weight"];

/// A delta of the pair as it can be made today: the fine-tune against the base with the grown
/// tensors grafted in (`onto`), the grown tensors excluded from quantization.
fn pair_delta(pair: &DecoderPair, dir: &Path, extra: &[&str]) -> (std::path::PathBuf, Value) {
    let (onto, fine) = (dir.join("onto"), dir.join("finetuned"));
    let grafted = graft_grown(&pair.base, &pair.finetuned, &onto);
    assert_eq!(
        grafted,
        2 * 4098 * 256 * 2,
        "embed_tokens and lm_head, bf16"
    );
    merge_shards(&pair.finetuned, &fine);
    let d = dir.join("d.bitdelta");
    let mut args = extra.to_vec();
    for g in GROWN {
        args.extend(["--exclude", g]);
    }
    let enc = delta_encode(
        &onto.join("model.safetensors"),
        &fine.join("model.safetensors"),
        &d,
        &args,
    );
    (onto, enc)
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// `zdn eval` on the real pair: the fine-tune moved far from the base (KL > 0.5 nats a token on
/// held-out chat text, perplexity more than halved), and a 1-bit per-row delta of every other
/// tensor (the grown embed_tokens and lm_head carried exactly) stays much closer to the fine-tune
/// than the base is: KL under a quarter of the base's, perplexity between the two.
#[test]
fn eval_on_the_real_pair() {
    let Some(pair) = decoder_pair("decoder::eval_on_the_real_pair") else {
        return;
    };
    let dir = tmpdir();
    let (onto, enc) = pair_delta(&pair, dir.path(), &["--scale", "row"]);
    let d = dir.path().join("d.bitdelta");
    for t in enc["tensors"].as_array().unwrap() {
        let name = t["name"].as_str().unwrap();
        if GROWN.contains(&name) {
            assert_eq!(t["encoding"], "unchanged", "{name}");
        }
    }
    let r = eval(&pair, &d, &onto, &[]);
    println!("{}", serde_json::to_string_pretty(&r).unwrap());
    assert_eq!(r["conversations"], 303);
    assert_eq!(r["base_vocab"], 4096);
    assert_eq!(r["finetuned_vocab"], 4098);
    let (kl_a, kl_b) = (f(&r["kl_finetuned_applied"]), f(&r["kl_finetuned_base"]));
    assert!(
        kl_b > 0.5,
        "the fine-tune should differ from the base: KL {kl_b}"
    );
    assert!(
        kl_a < kl_b / 4.0,
        "the delta-applied model should be much closer to the fine-tune than the base: {kl_a} vs {kl_b}"
    );
    let p = &r["common_perplexity"];
    let (pf, pa, pb) = (f(&p["finetuned"]), f(&p["applied"]), f(&p["base"]));
    assert!(pf < pb / 2.0, "fine-tune perplexity {pf}, base {pb}");
    assert!(
        pf <= pa && pa < pb,
        "perplexities: fine-tune {pf}, applied {pa}, base {pb}"
    );
    let kept = f(&r["gain_kept"]);
    assert!((kept - (pb - pa) / (pb - pf)).abs() < 1e-9);
    let st = &r["special_tokens"];
    assert!(f(&st["applied"]) > f(&st["base"]), "{st}");
    assert_eq!(
        r["delta_bytes"].as_u64().unwrap(),
        std::fs::metadata(&d).unwrap().len()
    );
}

/// The measure of the fine-tune against itself is exact: KL 0, every top-1 the same, all the gain.
#[test]
fn the_fine_tune_against_itself_is_exact() {
    let Some(pair) = decoder_pair("decoder::the_fine_tune_against_itself_is_exact") else {
        return;
    };
    let r = evaluate(&DecoderEvalJob {
        base: pair.base.clone(),
        finetuned: pair.finetuned.clone(),
        applied: AppliedWeights::Folder(pair.finetuned.clone()),
        corpus: pair.heldout.clone(),
        max_conversations: Some(40),
        max_tokens: 512,
        batch: 8,
        force: false,
    })
    .unwrap();
    assert_eq!(r.kl_finetuned_applied, 0.0);
    assert_eq!(r.top1_agreement.applied, 1.0);
    assert_eq!(r.special_tokens.applied, 1.0);
    assert_eq!(r.common_perplexity.applied, r.common_perplexity.finetuned);
    assert_eq!(r.gain_kept, 1.0);
    assert!(r.kl_finetuned_base > 0.0);
}

/// Bad inputs get clear errors: the pair's grown tensors to today's encoder, a delta recording a
/// base file applied to a sharded folder, a corpus that is not conversations, a base whose tokens
/// differ, a decoder family the forward pass does not implement.
#[test]
fn bad_decoder_inputs_are_refused_clearly() {
    let Some(pair) = decoder_pair("decoder::bad_decoder_inputs_are_refused_clearly") else {
        return;
    };
    let dir = tmpdir();
    let (b1, f1) = (dir.path().join("base"), dir.path().join("finetuned"));
    merge_shards(&pair.base, &b1);
    merge_shards(&pair.finetuned, &f1);
    zdn_err(
        &delta_encode_args(
            &b1.join("model.safetensors"),
            &f1.join("model.safetensors"),
            &dir.path().join("x.bitdelta"),
        ),
        "base shape [4096, 256] differs from fine-tune shape [4098, 256]",
    );
    let (onto, _) = pair_delta(&pair, dir.path(), &[]);
    let d = dir.path().join("d.bitdelta");
    let args = |base: &Path, onto: &Path, corpus: &Path| {
        [
            "eval",
            "--base",
            s(base),
            "--finetuned",
            s(&pair.finetuned),
            "--delta",
            s(&d),
            "--delta-base",
            s(onto),
            "--corpus",
            s(corpus),
            "--max-sentences",
            "4",
        ]
        .map(str::to_owned)
        .to_vec()
    };
    let run = |a: Vec<String>, needle: &str| {
        zdn_err(&a.iter().map(String::as_str).collect::<Vec<_>>(), needle);
    };
    run(
        args(&pair.base, &pair.base, &pair.heldout),
        "sharded (3 files)",
    );
    zdn_ok(
        &args(&pair.base, &onto, &pair.heldout)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );

    let text = dir.path().join("plain.txt");
    std::fs::write(&text, "Just some text.\n").unwrap();
    run(args(&pair.base, &onto, &text), "plain.txt line 1");

    let cfg_path = b1.join("config.json");
    let cfg = std::fs::read_to_string(&cfg_path).unwrap();
    std::fs::write(&cfg_path, cfg.replace("\"llama\"", "\"qwen2\"")).unwrap();
    run(
        args(&b1, &onto, &pair.heldout),
        "model_type \"qwen2\" is not a decoder",
    );
    std::fs::write(&cfg_path, &cfg).unwrap();

    let tok_path = b1.join("tokenizer.json");
    let tok = std::fs::read_to_string(&tok_path).unwrap();
    // Ids 34 and 35 swapped: a tokenizer that reads the same but numbers tokens differently.
    let swapped =
        tok.replacen("\"A\": 34,", "\"A\": 35,", 1)
            .replacen("\"B\": 35,", "\"B\": 34,", 1);
    assert_ne!(swapped, tok);
    std::fs::write(&tok_path, swapped).unwrap();
    run(
        args(&b1, &onto, &pair.heldout),
        "token 34 is Some(\"B\") in the base, Some(\"A\") in the fine-tune",
    );
}
