//! `folder`: a Llama-2-7B-shaped base and fine-tune as Hugging Face folders (real widths and
//! vocabulary; `--layers` of the 32), the fine-tune in another shard layout with a grown vocabulary
//! and changed side files, through the real CLI: `delta encode` (two folders), `add` of the base and
//! of the folder delta, a `fetch` of both by a second home from a seeding node over loopback,
//! `apply` from that home's store, `delta apply` from disk. Peak RSS and wall time of
//! each child; the two outputs must be identical and have the fine-tune's files and headers. A
//! plain copy of the base's biggest shard, in the same run, is the disk-rate reference.

use std::collections::BTreeMap;
use std::io::BufWriter;

use zdn::model::folder::ModelFolder;
use zdn_protocol::safetensors::{encode_header, TensorLayout};

use super::folder_facts::{folder_facts, matches_layout, same_files, FileFacts};
use super::*;

#[derive(Args, Debug, Clone)]
pub(super) struct FolderArgs {
    /// Working directory (deleted afterwards unless --keep).
    #[arg(long, default_value = ".work/bench/folder")]
    pub(super) dir: PathBuf,
    /// Decoder layers (Llama-2-7B has 32; memory is bounded by the largest tensor, not by this).
    #[arg(long, default_value_t = 8)]
    pub(super) layers: u32,
    #[arg(long, default_value_t = 4096)]
    pub(super) hidden: u64,
    #[arg(long, default_value_t = 11008)]
    intermediate: u64,
    /// Rows of `k_proj` and `v_proj` (heads × head width): the hidden size without grouped-query
    /// attention (Llama-2-7B), 1024 for Llama-2-70B's 8 key-value heads of 128.
    #[arg(long)]
    kv_dim: Option<u64>,
    #[arg(long, default_value_t = 32000)]
    pub(super) vocab: u64,
    /// Tokens the fine-tune adds (rows of embed_tokens and lm_head).
    #[arg(long, default_value_t = 2)]
    pub(super) added_tokens: u64,
    /// Largest shard of the base, and of the fine-tune, in MiB (different layouts on purpose).
    #[arg(long, default_value_t = 2048)]
    base_shard_mib: u64,
    #[arg(long, default_value_t = 1024)]
    finetune_shard_mib: u64,
    /// Chunk size of the adds (`zdn add --chunk-size`; default: zdn's, 1 MiB). 32768 cuts a 7B
    /// model into ~400 k chunks, a 70B model's count at 1 MiB and more.
    #[arg(long)]
    pub(super) chunk_size: Option<u32>,
    #[arg(long, value_enum, default_value_t = RssMethod::Auto)]
    pub(super) method: RssMethod,
    #[arg(long)]
    pub(super) zdn: Option<PathBuf>,
    #[arg(long)]
    pub(super) keep: bool,
    /// Delete each input and output once no later step needs it (the fine-tune after encoding,
    /// the seeder's store after the fetch, each output once hashed), so a full 32-layer pair
    /// (2 × 13.5 GB) goes through on a disk with ~40 GB free. Not with --keep.
    #[arg(long, conflicts_with = "keep")]
    lean: bool,
}

#[derive(Debug, Clone, Serialize)]
pub(super) struct FolderReport {
    layers: u32,
    base_bytes: u64,
    finetune_bytes: u64,
    base_shards: usize,
    finetune_shards: usize,
    delta_bytes: u64,
    largest_tensor_bytes: u64,
    /// 2 × the largest tensor + 256 MiB (issue 20's bound).
    rss_goal_bytes: u64,
    /// Copying the base's biggest shard with `std::fs::copy`, bytes/s: the disk reference.
    disk_copy_bytes_per_sec: f64,
    /// The adds' chunk size, and the base's chunk count.
    chunk_size: u32,
    base_chunks: u64,
    /// Peak RSS of the `zdn node run` that seeded the fetch (VmHWM before it stopped).
    seeder_peak_rss_bytes: u64,
    runs: Vec<FolderRun>,
    outputs_identical: bool,
    output_matches_finetune_layout: bool,
    /// Inputs and outputs deleted as soon as no later step needed them (`--lean`).
    lean: bool,
}

#[derive(Debug, Clone, Serialize)]
pub(super) struct FolderRun {
    step: &'static str,
    #[serde(flatten)]
    child: ChildRun,
    /// Bytes the step reads (its input), per second.
    input_bytes_per_sec: f64,
    /// The step's rate ÷ the disk copy's.
    vs_disk_copy: f64,
    rss_goal_met: bool,
}

/// The tensors of a Llama-2 decoder of `layers` layers and `vocab` rows, in Hugging Face order.
fn llama_layouts(a: &FolderArgs, vocab: u64) -> Vec<TensorLayout> {
    let (h, i) = (a.hidden, a.intermediate);
    let kv = a.kv_dim.unwrap_or(h);
    let mut out = vec![("model.embed_tokens.weight".to_string(), vec![vocab, h])];
    for l in 0..a.layers {
        let p = format!("model.layers.{l}");
        for (m, rows) in [("q_proj", h), ("k_proj", kv), ("v_proj", kv), ("o_proj", h)] {
            out.push((format!("{p}.self_attn.{m}.weight"), vec![rows, h]));
        }
        out.push((format!("{p}.mlp.gate_proj.weight"), vec![i, h]));
        out.push((format!("{p}.mlp.up_proj.weight"), vec![i, h]));
        out.push((format!("{p}.mlp.down_proj.weight"), vec![h, i]));
        out.push((format!("{p}.input_layernorm.weight"), vec![h]));
        out.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
    }
    out.push(("model.norm.weight".into(), vec![h]));
    out.push(("lm_head.weight".into(), vec![vocab, h]));
    out.into_iter()
        .map(|(name, shape)| TensorLayout {
            name,
            dtype: DType::BF16,
            shape,
        })
        .collect()
}

/// Bytes of the fine-tune's largest tensor (bf16).
pub(super) fn largest_tensor_bytes(a: &FolderArgs) -> u64 {
    llama_layouts(a, a.vocab + a.added_tokens)
        .iter()
        .map(|t| t.shape.iter().product::<u64>() * 2)
        .max()
        .unwrap_or(0)
}

/// Writes one tensor's bf16 values: the base's (`variant` 0) from a stream keyed by its name, a
/// fine-tune's (`variant` 1, 2, …) the same values plus a small change from a stream of its own,
/// and new rows from a stream every fine-tune shares.
fn write_values(w: &mut impl Write, t: &TensorLayout, base_rows: u64, variant: u64) -> Result<()> {
    let fine = variant > 0;
    let seed = t.name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let row: u64 = t.shape.iter().skip(1).product();
    let n: u64 = t.shape.iter().product();
    let common = if t.shape.len() == 2 {
        base_rows.min(t.shape[0]) * row
    } else {
        n
    };
    let (mut base, mut change, mut extra) = (
        Rng::new(seed),
        Rng::new(seed ^ (2 * variant).saturating_sub(1)),
        Rng::new(seed ^ 2),
    );
    let mut buf = Vec::with_capacity(1 << 21);
    for k in 0..n {
        let v = if k < common {
            let b = base.uniform() * 0.04;
            if fine {
                b + change.uniform() * 0.002
            } else {
                b
            }
        } else {
            extra.uniform() * 0.04
        };
        buf.extend_from_slice(&bf16::from_f32(v).to_le_bytes());
        if buf.len() >= 1 << 21 {
            w.write_all(&buf)?;
            buf.clear();
        }
    }
    w.write_all(&buf)?;
    Ok(())
}

/// Writes a model folder: the base (`variant` 0) or a fine-tune (1, 2, …: the same files, shapes
/// and added tokens, other changes): shards of at most `shard_mib`, the index and the side files.
pub(super) fn write_folder(a: &FolderArgs, dir: &Path, variant: u64) -> Result<()> {
    let fine = variant > 0;
    std::fs::create_dir_all(dir)?;
    let vocab = a.vocab + if fine { a.added_tokens } else { 0 };
    let layouts = llama_layouts(a, vocab);
    let max = (if fine {
        a.finetune_shard_mib
    } else {
        a.base_shard_mib
    }) << 20;
    let mut shards: Vec<Vec<TensorLayout>> = vec![Vec::new()];
    let mut acc = 0u64;
    for t in layouts {
        let len = t.byte_len().context("tensor size")?;
        if acc > 0 && acc + len > max {
            shards.push(Vec::new());
            acc = 0;
        }
        acc += len;
        shards.last_mut().context("a shard")?.push(t);
    }
    let n = shards.len();
    let mut weight_map = BTreeMap::new();
    let mut total = 0u64;
    for (k, shard) in shards.iter().enumerate() {
        let name = format!("model-{:05}-of-{n:05}.safetensors", k + 1);
        let meta = BTreeMap::from([("format".to_string(), "pt".to_string())]);
        let (header, _) = encode_header(shard, &meta)?;
        let mut w = BufWriter::with_capacity(1 << 22, File::create(dir.join(&name))?);
        w.write_all(&header)?;
        for t in shard {
            write_values(&mut w, t, a.vocab, variant)?;
            total += t.byte_len().context("tensor size")?;
            weight_map.insert(t.name.clone(), name.clone());
        }
        w.flush()?;
    }
    let json = |name: &str, v: serde_json::Value| -> Result<()> {
        Ok(std::fs::write(
            dir.join(name),
            serde_json::to_string_pretty(&v)? + "\n",
        )?)
    };
    json(
        "model.safetensors.index.json",
        serde_json::json!({"metadata": {"total_size": total}, "weight_map": weight_map}),
    )?;
    json(
        "config.json",
        serde_json::json!({"architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "hidden_size": a.hidden, "intermediate_size": a.intermediate,
            "num_attention_heads": a.hidden / 128,
            "num_key_value_heads": a.kv_dim.unwrap_or(a.hidden) / 128,
            "num_hidden_layers": a.layers, "vocab_size": vocab, "torch_dtype": "bfloat16"}),
    )?;
    json(
        "generation_config.json",
        serde_json::json!({"bos_token_id": 1, "eos_token_id": 2}),
    )?;
    let added: Vec<String> = (0..vocab - a.vocab)
        .map(|i| format!("<|special_{i}|>"))
        .collect();
    json(
        "tokenizer_config.json",
        serde_json::json!({"bos_token": "<s>", "eos_token": "</s>", "added_tokens": added,
            "chat_template": if fine { "{% for m in messages %}<|special_0|>{{ m.content }}{% endfor %}" } else { "" }}),
    )?;
    Ok(())
}

fn dir_bytes(dir: &Path) -> Result<(u64, usize)> {
    let mut bytes = 0;
    let mut shards = 0;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        bytes += e.metadata()?.len();
        shards += usize::from(e.file_name().to_string_lossy().ends_with(".safetensors"));
    }
    Ok((bytes, shards))
}

/// Command-line arguments from strings and paths.
fn argv(parts: &[&dyn AsRef<std::ffi::OsStr>]) -> Vec<std::ffi::OsString> {
    parts.iter().map(|p| p.as_ref().to_owned()).collect()
}

/// Bytes per second of a plain copy of the biggest file of `dir` (into `work`, removed after).
fn disk_copy_rate(dir: &Path, work: &Path) -> Result<f64> {
    let biggest = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .max_by_key(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .context("a base file")?
        .path();
    let copy = work.join("copy.tmp");
    let secs = file_copy_time(&biggest, &copy)?;
    let _ = std::fs::remove_file(copy);
    Ok(std::fs::metadata(&biggest)?.len() as f64 / secs)
}

/// A `zdn node run` seeding from a home, on a free loopback port.
struct Seeder {
    child: std::process::Child,
    addr: String,
}

impl Seeder {
    fn start(zdn: &Path, home: &Path) -> Result<Self> {
        use std::io::BufRead;
        let mut child = Command::new(zdn)
            .arg("--home")
            .arg(home)
            .args([
                "node",
                "run",
                "--listen",
                "/ip4/127.0.0.1/tcp/0",
                "--no-mdns",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let out = child.stdout.take().context("the node's stdout")?;
        for line in std::io::BufReader::new(out).lines() {
            if let Some(addr) = line?.strip_prefix("listening ") {
                return Ok(Seeder {
                    child,
                    addr: addr.to_string(),
                });
            }
        }
        let _ = child.kill();
        anyhow::bail!("the seeding node stopped before it listened")
    }

    /// Its peak RSS, then SIGKILL.
    fn stop(mut self) -> u64 {
        let kib = read_vmhwm_kib(&format!("/proc/{}/status", self.child.id())).unwrap_or(0);
        let _ = self.child.kill();
        let _ = self.child.wait();
        kib * 1024
    }
}

/// Removes what an earlier run left in `stale`; generates the pair, unless `--keep` finds one.
fn prepare(a: &FolderArgs, base: &Path, fine: &Path, stale: &[&Path], say: bool) -> Result<()> {
    for p in stale {
        let _ = std::fs::remove_dir_all(p);
    }
    if a.keep && base.is_dir() && fine.is_dir() {
        return Ok(());
    }
    let _ = std::fs::remove_dir_all(&a.dir);
    if say {
        eprintln!("generating {} and {} …", base.display(), fine.display());
    }
    write_folder(a, base, 0)?;
    write_folder(a, fine, 1)
}

/// Runs the CLI steps, each measured.
struct Steps<'a> {
    zdn: &'a Path,
    a: &'a FolderArgs,
    say: bool,
    disk: f64,
    goal: u64,
    runs: Vec<FolderRun>,
    /// Peak RSS of the seeding node over its life.
    seeder_peak_rss_bytes: u64,
    base_chunks: u64,
    /// The fine-tune's files, and each output's (apply from the store, delta apply from disk),
    /// taken as soon as they exist (`--lean` deletes them then).
    fine_facts: BTreeMap<String, FileFacts>,
    out_facts: Vec<BTreeMap<String, FileFacts>>,
}

impl Steps<'_> {
    /// Runs `zdn args…` as step `step` reading `input` bytes; returns its stdout.
    fn run(
        &mut self,
        step: &'static str,
        input: u64,
        args: &[std::ffi::OsString],
    ) -> Result<String> {
        let stdout = self.a.dir.join(format!("{step}.out"));
        let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        let child = run_child(self.zdn, &args, &stdout, self.a.method)?;
        let rate = input as f64 / child.wall_s;
        if self.say {
            let rss = mib(child.peak_rss_bytes);
            eprintln!("{step}: {:.1} s, peak RSS {rss:.0} MiB", child.wall_s);
        }
        self.runs.push(FolderRun {
            step,
            input_bytes_per_sec: rate,
            vs_disk_copy: rate / self.disk,
            rss_goal_met: child.peak_rss_bytes <= self.goal,
            child,
        });
        Ok(std::fs::read_to_string(stdout)?)
    }

    /// The CLI steps on (base, fine-tune, delta, home, store output, disk output); returns the
    /// folder delta's size.
    fn all(&mut self, paths: [&PathBuf; 6], base_bytes: u64, finetune_bytes: u64) -> Result<u64> {
        let [base, fine, delta, home, out1, out2] = paths;
        let h = home.as_os_str();
        let (b, d) = (base.as_os_str(), delta.as_os_str());
        let delta_bytes = self.encode([base, fine, delta], base_bytes + finetune_bytes)?;
        let hash = |out: String| -> Result<String> {
            let v: serde_json::Value = serde_json::from_str(&out)?;
            Ok(v["hash"].as_str().context("a hash")?.to_string())
        };
        let chunk = self.a.chunk_size.unwrap_or(1 << 20).to_string();
        let add_base = argv(&[
            &"--home",
            &h,
            &"add",
            &b,
            &"--chunk-size",
            &chunk,
            &"--json",
        ]);
        let added = self.run("add base folder", base_bytes, &add_base)?;
        self.base_chunks = serde_json::from_str::<serde_json::Value>(&added)?["chunks"]
            .as_u64()
            .unwrap_or(0);
        let base_hash = hash(added)?;
        let add_delta = argv(&[
            &"--home",
            &h,
            &"add",
            &d,
            &"--base",
            &base_hash,
            &"--chunk-size",
            &chunk,
            &"--json",
        ]);
        let delta_hash = hash(self.run("add folder delta", delta_bytes, &add_delta)?)?;
        // A second home fetches the delta (and its base) from a seeding node over loopback, and
        // applies it from its own store.
        let station = home.with_file_name("station");
        let _ = std::fs::remove_dir_all(&station);
        let key = Command::new(self.zdn)
            .arg("--home")
            .arg(home)
            .args(["key", "show"])
            .output()?
            .stdout;
        let key = String::from_utf8(key)?;
        let seeder = Seeder::start(self.zdn, home)?;
        let st = station.as_os_str();
        let fetch = argv(&[
            &"--home",
            &st,
            &"fetch",
            &delta_hash,
            &"--peer",
            &seeder.addr,
            &"--trust",
            &key.trim(),
            &"--json",
        ]);
        let fetched = self.run(
            "fetch base and delta over loopback",
            base_bytes + delta_bytes,
            &fetch,
        );
        self.seeder_peak_rss_bytes = seeder.stop();
        fetched?;
        self.drop_if_lean(home)?;
        let (o1, o2) = (out1.as_os_str(), out2.as_os_str());
        let apply = argv(&[&"--home", &st, &"apply", &delta_hash, &"-o", &o1, &"--json"]);
        self.run("apply from the store", finetune_bytes, &apply)?;
        self.take_output(out1)?;
        self.drop_if_lean(&station)?;
        let apply = argv(&[
            &"delta", &"apply", &"--base", &b, &"--delta", &d, &"-o", &o2, &"--json",
        ]);
        self.run("delta apply from disk", finetune_bytes, &apply)?;
        self.take_output(out2)?;
        Ok(delta_bytes)
    }

    /// `delta encode` of (base, fine-tune) into `delta`, reading `both` bytes; takes the
    /// fine-tune's facts, then (`--lean`) deletes it. Returns the folder delta's size.
    fn encode(&mut self, [base, fine, delta]: [&PathBuf; 3], both: u64) -> Result<u64> {
        let (b, f, d) = (base.as_os_str(), fine.as_os_str(), delta.as_os_str());
        self.run(
            "delta encode (two folders)",
            both,
            &argv(&[
                &"delta",
                &"encode",
                &"--base",
                &b,
                &"--finetuned",
                &f,
                &"-o",
                &d,
                &"--json",
            ]),
        )?;
        let delta_bytes = ModelFolder::open(delta)?
            .files()
            .iter()
            .map(|(_, m)| m.len() as u64)
            .sum();
        self.fine_facts = folder_facts(fine)?;
        self.drop_if_lean(fine)?;
        Ok(delta_bytes)
    }

    /// Takes the facts of an apply's output folder `out`, then (`--lean`) deletes it.
    fn take_output(&mut self, out: &Path) -> Result<()> {
        self.out_facts.push(folder_facts(out)?);
        self.drop_if_lean(out)
    }

    /// With `--lean`, deletes `dir`: no later step reads it.
    fn drop_if_lean(&self, dir: &Path) -> Result<()> {
        if self.a.lean {
            std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        Ok(())
    }
}

pub(super) fn bench_folder(a: &FolderArgs, say: bool) -> Result<FolderReport> {
    let zdn = zdn_path(a.zdn.as_deref())?;
    let (base, fine) = (a.dir.join("base"), a.dir.join("finetune"));
    let (delta, home) = (a.dir.join("chat.delta"), a.dir.join("home"));
    let (out1, out2) = (a.dir.join("from-store"), a.dir.join("from-disk"));
    prepare(a, &base, &fine, &[&delta, &home, &out1, &out2], say)?;
    let (base_bytes, base_shards) = dir_bytes(&base)?;
    let (finetune_bytes, finetune_shards) = dir_bytes(&fine)?;
    let largest = largest_tensor_bytes(a);
    let goal = 2 * largest + (256 << 20);
    let disk = disk_copy_rate(&base, &a.dir)?;

    let mut steps = Steps {
        zdn: &zdn,
        a,
        say,
        disk,
        goal,
        runs: Vec::new(),
        seeder_peak_rss_bytes: 0,
        base_chunks: 0,
        fine_facts: BTreeMap::new(),
        out_facts: Vec::new(),
    };
    let paths = [&base, &fine, &delta, &home, &out1, &out2];
    let delta_bytes = steps.all(paths, base_bytes, finetune_bytes)?;
    let [from_store, from_disk] = &steps.out_facts[..] else {
        anyhow::bail!("the two applies' outputs were not both taken");
    };
    let outputs_identical = same_files(from_store, from_disk);
    let output_matches_finetune_layout = matches_layout(from_store, &steps.fine_facts);
    if !a.keep {
        let _ = std::fs::remove_dir_all(&a.dir);
    }
    let r = FolderReport {
        layers: a.layers,
        base_bytes,
        finetune_bytes,
        base_shards,
        finetune_shards,
        delta_bytes,
        largest_tensor_bytes: largest,
        rss_goal_bytes: goal,
        disk_copy_bytes_per_sec: disk,
        seeder_peak_rss_bytes: steps.seeder_peak_rss_bytes,
        chunk_size: a.chunk_size.unwrap_or(1 << 20),
        base_chunks: steps.base_chunks,
        runs: steps.runs,
        outputs_identical,
        output_matches_finetune_layout,
        lean: a.lean,
    };
    if say {
        print_folder(&r);
    }
    Ok(r)
}

fn print_folder(r: &FolderReport) {
    println!(
        "folder: Llama-2-7B shapes, {} layers; base {:.2} GiB in {} shards, fine-tune {:.2} GiB in {} shards; folder delta {:.1} MiB",
        r.layers,
        r.base_bytes as f64 / (1u64 << 30) as f64,
        r.base_shards,
        r.finetune_bytes as f64 / (1u64 << 30) as f64,
        r.finetune_shards,
        mib(r.delta_bytes)
    );
    println!(
        "        largest tensor {:.1} MiB; goal: peak RSS ≤ 2 × largest + 256 MiB = {:.1} MiB; disk copy {:.0} MiB/s",
        mib(r.largest_tensor_bytes),
        mib(r.rss_goal_bytes),
        r.disk_copy_bytes_per_sec / (1u64 << 20) as f64
    );
    println!("| step | wall s | input MiB/s | ÷ disk copy | peak RSS MiB | RSS goal |");
    println!("|---|---|---|---|---|---|");
    for s in &r.runs {
        println!(
            "| {} | {:.1} | {:.0} | {:.2} | {:.0} | {} |",
            s.step,
            s.child.wall_s,
            s.input_bytes_per_sec / (1u64 << 20) as f64,
            s.vs_disk_copy,
            mib(s.child.peak_rss_bytes),
            goal(s.rss_goal_met)
        );
    }
    println!(
        "seeding node's peak RSS: {:.0} MiB; chunk size {} bytes, {} chunks in the base",
        mib(r.seeder_peak_rss_bytes),
        r.chunk_size,
        r.base_chunks
    );
    println!(
        "outputs of apply and delta apply identical: {}; the fine-tune's files, side files and headers: {}",
        r.outputs_identical, r.output_matches_finetune_layout
    );
}
