//! End-to-end tests of the store commands (`zdn key|add|get|cat|ls|pin|unpin|gc|verify|export|import`)
//! with the real binary on a real rocksdb store, including SIGKILL during `add` and a full disk.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::Value;
use zdn::model::synthetic::{write_pair, SyntheticSpec};

fn spec(seed: u64) -> SyntheticSpec {
    SyntheticSpec {
        layers: 2,
        vocab: 4000,
        seed,
        ..SyntheticSpec::small()
    }
}

/// A base, a fine-tune and its delta in `dir`.
fn models(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let base = dir.join("base.safetensors");
    let fine = dir.join("fine.safetensors");
    let delta = dir.join("fine.bitdelta");
    write_pair(&spec(3), &base, &fine).unwrap();
    zdn_ok(&[
        "delta",
        "encode",
        "--base",
        s(&base),
        "--finetuned",
        s(&fine),
        "-o",
        s(&delta),
    ]);
    (base, fine, delta)
}

fn ls(home: &Path) -> Vec<Value> {
    json(&ok(home, &["ls", "--json"]))
        .as_array()
        .unwrap()
        .clone()
}

fn verify_clean(home: &Path) -> Value {
    let out = zdn(&at(home, &["verify", "--json"])
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>());
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "verify found problems: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    json(&text)
}

#[test]
fn publish_get_bundle_gc() {
    let t = tmpdir();
    let (base, _fine, delta) = models(t.path());
    let home = t.path().join("home");

    // Keys: generated 0600, shown, never overwritten silently.
    let public = ok(&home, &["key", "generate"]).trim().to_string();
    assert_eq!(public.len(), 64);
    assert_eq!(ok(&home, &["key", "show"]).trim(), public);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(home.join("publisher.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    err(&home, &["key", "generate"], "refusing to overwrite");

    let rb = json(&ok(&home, &["add", s(&base), "--name", "minilm", "--json"]));
    let base_hash = rb["hash"].as_str().unwrap().to_string();
    assert_eq!(rb["new_chunks"], rb["chunks"]);
    err(&home, &["add", s(&delta)], "--base");
    err(
        &home,
        &["add", s(&delta), "--base", "nothing-by-that-name"],
        "not a hash",
    );
    let delta_hash = ok(&home, &["add", s(&delta), "--base", "minilm"])
        .trim()
        .to_string();
    assert_eq!(delta_hash.len(), 64);

    // Same file again: same hash, nothing new.
    let again = json(&ok(&home, &["add", s(&base), "--name", "minilm", "--json"]));
    assert_eq!(again["hash"], base_hash.as_str());
    assert_eq!(again["new_chunks"], 0);
    assert_eq!(again["already_present"], true);

    let objects = ls(&home);
    assert_eq!(objects.len(), 2);
    let d = objects
        .iter()
        .find(|o| o["hash"] == delta_hash.as_str())
        .unwrap();
    assert_eq!(d["kind"], "delta");
    assert_eq!(d["base"], base_hash.as_str());

    let out = t.path().join("got.bitdelta");
    ok(&home, &["get", &delta_hash[..12], "-o", s(&out)]);
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&delta).unwrap());
    // `zdn apply` of the single-file delta, base and delta read from the store: the bytes
    // `delta apply` writes from the two files.
    let (from_store, from_files) = (
        t.path().join("a.safetensors"),
        t.path().join("b.safetensors"),
    );
    ok(&home, &["apply", &delta_hash, "-o", s(&from_store)]);
    zdn_ok(&delta_apply_args(&base, &delta, &from_files));
    assert_eq!(
        std::fs::read(&from_store).unwrap(),
        std::fs::read(&from_files).unwrap()
    );
    let cat = zdn(&at(&home, &["cat", "minilm"])
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>());
    assert!(cat.status.success());
    assert_eq!(cat.stdout, std::fs::read(&base).unwrap());
    verify_clean(&home);

    // Bundle to a second station: refused while the publisher is not trusted, then accepted.
    let bundle = t.path().join("carry.zdnb");
    ok(&home, &["export", &delta_hash, "-o", s(&bundle)]);
    let station = t.path().join("station");
    err(&station, &["import", s(&bundle)], "not trusted");
    assert!(ls(&station).is_empty());
    std::fs::create_dir_all(&station).unwrap();
    std::fs::write(
        station.join("config.toml"),
        format!("trusted_publishers = [\"{public}\"]\n"),
    )
    .unwrap();
    let imported = ok(&station, &["import", s(&bundle)]);
    assert!(imported.contains(&delta_hash) && imported.contains(&base_hash));
    let out2 = t.path().join("station.bitdelta");
    ok(&station, &["get", &delta_hash, "-o", s(&out2)]);
    assert_eq!(
        std::fs::read(&out2).unwrap(),
        std::fs::read(&delta).unwrap()
    );

    // gc: a pinned delta keeps its base; unpinned, both go.
    let g = json(&ok(&station, &["gc", "--json"]));
    assert_eq!(g["manifests_removed"], 0);
    ok(&station, &["unpin", &base_hash]);
    let g = json(&ok(&station, &["gc", "--json"]));
    assert_eq!(g["manifests_removed"], 0, "the pinned delta keeps its base");
    ok(&station, &["unpin", &delta_hash]);
    let g = json(&ok(&station, &["gc", "--json"]));
    assert_eq!(g["manifests_removed"], 2);
    assert!(ls(&station).is_empty());
    let v = verify_clean(&station);
    assert_eq!(v["chunks_checked"], 0);
}

#[test]
fn a_second_fine_tune_stores_only_new_chunks() {
    let t = tmpdir();
    let (base, fine, _) = models(t.path());
    // A second fine-tune: the first with two tensors changed.
    let fine2 = t.path().join("fine2.safetensors");
    let mut bytes = std::fs::read(&fine).unwrap();
    let header = zdn_protocol::safetensors::parse(&bytes).unwrap();
    let n = header.tensors.len();
    for info in [&header.tensors[1], &header.tensors[n - 1]] {
        let r = info.range.clone();
        for b in &mut bytes[r.start..r.start + 64] {
            *b ^= 0x5a;
        }
    }
    std::fs::write(&fine2, &bytes).unwrap();

    let home = t.path().join("home");
    let chunk = ["--chunk-size", "262144", "--json"];
    let rb = json(&ok(&home, &[&["add", s(&base)][..], &chunk].concat()));
    let r1 = json(&ok(&home, &[&["add", s(&fine)][..], &chunk].concat()));
    let r2 = json(&ok(&home, &[&["add", s(&fine2)][..], &chunk].concat()));
    assert!(rb["new_chunks"].as_u64().unwrap() > 10);
    // The fine-tune changed every tensor of the base: nearly everything is new.
    assert!(r1["dedup_bytes"].as_u64().unwrap() < r1["object_len"].as_u64().unwrap() / 10);
    // fine2 shares all but two tensors (and the header chunk) with fine.
    let new2 = r2["new_chunks"].as_u64().unwrap();
    assert!((2..=4).contains(&new2), "{r2}");
    let len2 = r2["object_len"].as_u64().unwrap();
    assert!(r2["dedup_bytes"].as_u64().unwrap() > len2 * 9 / 10, "{r2}");
}

#[test]
fn corruption_on_disk_is_reported() {
    let t = tmpdir();
    let (base, _, _) = models(t.path());
    let home = t.path().join("home");
    let hash = ok(&home, &["add", s(&base)]).trim().to_string();
    verify_clean(&home);
    // Flip bytes in the middle of the largest blob file (chunk values live there).
    let store = home.join("store");
    let blob = files_in(&store)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "blob"))
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .expect("no blob file in the store");
    let mut b = std::fs::read(&blob).unwrap();
    let mid = b.len() / 2;
    for x in &mut b[mid..mid + 16] {
        *x ^= 0xff;
    }
    std::fs::write(&blob, &b).unwrap();
    let out = zdn(&at(&home, &["verify", "--json"])
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>());
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = json(&String::from_utf8_lossy(&out.stdout));
    assert!(!v["problems"].as_array().unwrap().is_empty());
    err(
        &home,
        &["get", &hash, "-o", s(&t.path().join("x"))],
        "corrupt",
    );
    assert!(
        !t.path().join("x").exists(),
        "a failed get left a file behind"
    );
}

#[test]
fn bad_bundles_leave_the_store_as_it_was() {
    let t = tmpdir();
    let (base, _, _) = models(t.path());
    let home = t.path().join("home");
    let hash = ok(&home, &["add", s(&base)]).trim().to_string();
    let bundle = t.path().join("b.zdnb");
    ok(&home, &["export", &hash, "-o", s(&bundle)]);
    let bytes = std::fs::read(&bundle).unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "truncated",
            bytes[..bytes.len() * 2 / 3].to_vec(),
            "truncated",
        ),
        (
            "flipped",
            {
                let mut b = bytes.clone();
                let i = b.len() / 2;
                b[i] ^= 1;
                b
            },
            "hash",
        ),
        ("empty", Vec::new(), "truncated"),
        (
            "not a bundle",
            b"hello world, definitely not a bundle".to_vec(),
            "not a zdn bundle",
        ),
    ];
    for (what, b, needle) in cases {
        let station = t.path().join(format!("st-{}", what.replace(' ', "-")));
        let f = t.path().join(format!("{}.zdnb", what.replace(' ', "-")));
        std::fs::write(&f, b).unwrap();
        err(&station, &["import", s(&f), "--trust-any"], needle);
        assert!(ls(&station).is_empty(), "{what}");
        let v = verify_clean(&station);
        assert_eq!(v["chunks_checked"], 0, "{what}: chunks left behind");
    }
    // Over the configured size limit.
    let station = t.path().join("small");
    std::fs::create_dir_all(&station).unwrap();
    std::fs::write(station.join("config.toml"), "max_object_size = 1000\n").unwrap();
    err(
        &station,
        &["import", s(&bundle), "--trust-any"],
        "over the store's limit",
    );
    err(&station, &["add", s(&base)], "over the store's limit");
    assert!(ls(&station).is_empty());
}

fn zdn_bin() -> &'static str {
    env!("CARGO_BIN_EXE_zdn")
}

#[test]
fn sigkill_during_add_never_corrupts_the_store() {
    let t = tmpdir();
    // A model big enough that add takes a while: many small chunks, each a synced-or-not write.
    let base = t.path().join("big.safetensors");
    let fine = t.path().join("big-fine.safetensors");
    write_pair(
        &SyntheticSpec {
            layers: 4,
            ..spec(11)
        },
        &base,
        &fine,
    )
    .unwrap();
    let home = t.path().join("home");
    let args = at(&home, &["add", s(&fine), "--chunk-size", "65536"]);

    // How long a full add takes, on a throwaway store. Re-measured by every completing re-run below
    // (the shortest seen is kept): under a loaded CI machine one measurement can be twice the next.
    let scratch = t.path().join("scratch");
    let start = Instant::now();
    ok(&scratch, &["add", s(&fine), "--chunk-size", "65536"]);
    let mut full = start.elapsed();

    // Kill points fall in the first half of an add, so nearly every run is cut mid-add; runs go on
    // (up to 40) until 10 have been, so the test cannot pass without exercising a kill.
    let mut killed = 0;
    let mut rng = 0x1234_5678_9abc_def0u64;
    for run in 0..40 {
        if killed >= 10 && run >= 20 {
            break;
        }
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let at_ms = (rng % (full.as_millis() as u64 / 2 + 1)).max(1);
        let mut child = Command::new(zdn_bin())
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(at_ms));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            killed += 1;
        }
        child.wait().unwrap();
        let v = verify_clean(&home);
        // Whatever is visible is complete.
        for o in ls(&home) {
            assert_eq!(o["kind"], "base", "run {run}");
        }
        let _ = v;
        if run % 5 == 4 {
            // A re-run completes.
            let start = Instant::now();
            ok(&home, &["add", s(&fine), "--chunk-size", "65536"]);
            full = full.min(start.elapsed());
            verify_clean(&home);
            ok(&home, &["gc"]);
            ok(&home, &["unpin", ls(&home)[0]["hash"].as_str().unwrap()]);
            ok(&home, &["gc"]);
            assert!(ls(&home).is_empty());
        }
    }
    assert!(
        killed >= 10,
        "only {killed} of 40 runs were killed mid-add (add took {full:?})"
    );
    let hash = ok(&home, &["add", s(&fine), "--chunk-size", "65536"])
        .trim()
        .to_string();
    let out = t.path().join("back.safetensors");
    ok(&home, &["get", &hash, "-o", s(&out)]);
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&fine).unwrap());
}

#[test]
fn a_full_disk_gives_a_clear_error_and_no_corruption() {
    let t = tmpdir();
    let base = t.path().join("big.safetensors");
    let fine = t.path().join("big-fine.safetensors");
    write_pair(
        &SyntheticSpec {
            layers: 4,
            ..spec(12)
        },
        &base,
        &fine,
    )
    .unwrap();
    let home = t.path().join("home");
    // Create the store first, then run add with a 4 MiB file size limit (RLIMIT_FSIZE; SIGXFSZ
    // ignored so writes fail with EFBIG the way they fail with ENOSPC on a full disk).
    ok(&home, &["ls"]);
    let script = format!(
        "trap '' XFSZ; ulimit -f 4096; exec '{}' --home '{}' add '{}'",
        zdn_bin(),
        s(&home),
        s(&fine)
    );
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "add succeeded under a 4 MiB file limit"
    );
    assert!(
        stderr.contains("error:") && (stderr.contains("too large") || stderr.contains("space")),
        "unclear error: {stderr}"
    );
    assert!(ls(&home).is_empty());
    verify_clean(&home);
    // With room again, add completes and the object reads back.
    let hash = ok(&home, &["add", s(&fine)]).trim().to_string();
    let out = t.path().join("back.safetensors");
    ok(&home, &["get", &hash, "-o", s(&out)]);
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&fine).unwrap());
}
