#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use crate::bitdelta::{Encoding, Granularity};
use crate::safetensors::{encode_header, TensorLayout};
use crate::DType;
use proptest::prelude::*;

fn h(b: u8) -> Hash {
    Hash::from_bytes([b; 32])
}

fn sample() -> FolderDelta {
    FolderDelta {
        format: FORMAT.into(),
        files: vec![
            OutputFile {
                path: "config.json".into(),
                from: Source::Carried,
                len: 10,
                blake3: Some(h(1)),
                base_blake3: None,
            },
            OutputFile {
                path: "model-00001-of-00002.safetensors".into(),
                from: Source::Tensors,
                len: 100,
                blake3: None,
                base_blake3: None,
            },
            OutputFile {
                path: "tokenizer.json".into(),
                from: Source::Base,
                len: 7,
                blake3: Some(h(2)),
                base_blake3: None,
            },
        ],
        grown: vec![GrownTensor {
            name: "lm_head.weight".into(),
            rows: format!("lm_head.weight{GROWN_SUFFIX}"),
        }],
        exact_rows: Vec::new(),
    }
}

/// The layout's JSON is part of the format: this is what `sample()` is, byte for byte.
#[test]
fn golden_layout_bytes() {
    let want = format!(
        r#"{{
  "format": "zdn-folder-delta/1",
  "files": [
    {{
      "path": "config.json",
      "from": "carried",
      "len": 10,
      "blake3": "{}"
    }},
    {{
      "path": "model-00001-of-00002.safetensors",
      "from": "tensors",
      "len": 100
    }},
    {{
      "path": "tokenizer.json",
      "from": "base",
      "len": 7,
      "blake3": "{}"
    }}
  ],
  "grown": [
    {{
      "name": "lm_head.weight",
      "rows": "lm_head.weight.zdn_new_rows"
    }}
  ]
}}
"#,
        h(1).to_hex(),
        h(2).to_hex()
    );
    assert_eq!(String::from_utf8(sample().to_bytes()).unwrap(), want);
    assert_eq!(FolderDelta::parse(want.as_bytes()).unwrap(), sample());
}

#[test]
fn bad_layouts_are_refused() {
    let bad = |f: &dyn Fn(&mut FolderDelta)| {
        let mut d = sample();
        f(&mut d);
        FolderDelta::parse(&d.to_bytes()).unwrap_err()
    };
    assert!(matches!(
        bad(&|d| d.format = "zdn-folder-delta/3".into()),
        FolderDeltaError::Format(_)
    ));
    // Format 2 without a patched file.
    assert!(matches!(
        bad(&|d| d.format = "zdn-folder-delta/2".into()),
        FolderDeltaError::FormatMismatch { .. }
    ));
    assert!(matches!(
        bad(&|d| d.files[0].path = "../config.json".into()),
        FolderDeltaError::Files(_)
    ));
    assert!(matches!(
        bad(&|d| d.files.swap(0, 2)),
        FolderDeltaError::Files(_)
    ));
    assert!(matches!(
        bad(&|d| d.files[0].blake3 = None),
        FolderDeltaError::File { .. }
    ));
    assert!(matches!(
        bad(&|d| d.files[1].blake3 = Some(h(3))),
        FolderDeltaError::File { .. }
    ));
    assert!(matches!(
        bad(&|d| d.files[1].path = "model.bin".into()),
        FolderDeltaError::File { .. }
    ));
    assert!(matches!(
        bad(&|d| d.grown.push(d.grown[0].clone())),
        FolderDeltaError::Grown(_)
    ));
    assert!(matches!(
        bad(&|d| d.grown[0].rows = "lm_head.weight".into()),
        FolderDeltaError::Grown(_)
    ));
    assert!(matches!(
        bad(&|d| d.files.clear()),
        FolderDeltaError::Files(FolderError::Empty)
    ));
    // Unknown fields are refused, not ignored.
    let text = String::from_utf8(sample().to_bytes()).unwrap().replacen(
        "\"format\"",
        "\"extra\": 1, \"format\"",
        1,
    );
    assert!(matches!(
        FolderDelta::parse(text.as_bytes()),
        Err(FolderDeltaError::Json(_))
    ));
    let big = vec![b' '; MAX_LAYOUT_LEN + 1];
    assert!(matches!(
        FolderDelta::parse(&big),
        Err(FolderDeltaError::TooLarge(_))
    ));
}

#[test]
fn members_must_match_the_layout() {
    let d = sample();
    let good = [
        ("delta.bitdelta", 5),
        ("files/config.json", 10),
        ("headers/model-00001-of-00002.safetensors", 40),
        ("zdn-delta.json", 300),
    ];
    d.check_members(good).unwrap();
    let e = d.check_members(good[..3].iter().copied()).unwrap_err();
    assert_eq!(e, FolderDeltaError::MissingMember(LAYOUT_MEMBER.into()));
    let mut stray = good.to_vec();
    stray.push(("files/tokenizer.json", 7));
    assert!(matches!(
        d.check_members(stray).unwrap_err(),
        FolderDeltaError::StrayMember(_)
    ));
    let mut short = good.to_vec();
    short[1].1 = 9;
    assert!(matches!(
        d.check_members(short).unwrap_err(),
        FolderDeltaError::File { .. }
    ));
}

fn header(tensors: &[(&str, Vec<u64>)]) -> Vec<u8> {
    let layouts: Vec<TensorLayout> = tensors
        .iter()
        .map(|(n, s)| TensorLayout {
            name: (*n).into(),
            dtype: DType::F32,
            shape: s.clone(),
        })
        .collect();
    encode_header(&layouts, &Default::default()).unwrap().0
}

fn entry(name: &str, shape: Vec<u64>) -> IndexEntry {
    IndexEntry {
        name: name.into(),
        dtype: DType::F32,
        shape,
        encoding: Encoding::Raw,
        granularity: Granularity::Tensor,
        offset: 0,
        length: 0,
    }
}

#[test]
fn a_header_alone_parses_when_its_tensors_tile_the_data() {
    let hb = header(&[("a", vec![2, 3]), ("b", vec![4])]);
    let hd = parse_header("m.safetensors", &hb).unwrap();
    assert_eq!(file_len(&hd), hb.len() as u64 + 24 + 16);
    // A header member with trailing bytes, or cut short, is refused.
    let mut long = hb.clone();
    long.push(0);
    assert!(parse_header("m.safetensors", &long).is_err());
    assert!(parse_header("m.safetensors", &hb[..hb.len() - 1]).is_err());
    assert!(parse_header("m.safetensors", &hb[..4]).is_err());
    // A gap in the data section is refused (the file could not be rebuilt byte for byte).
    let json = br#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#;
    let mut gap = (json.len() as u64).to_le_bytes().to_vec();
    gap.extend_from_slice(json);
    let e = parse_header("g.safetensors", &gap).unwrap_err();
    assert!(matches!(e, FolderDeltaError::Shard { .. }), "{e}");
}

fn layout_with(grown: Vec<GrownTensor>, exact_rows: Vec<ExactRows>) -> FolderDelta {
    FolderDelta {
        format: FORMAT.into(),
        files: sample().files,
        grown,
        exact_rows,
    }
}

#[test]
fn plans_pair_header_tensors_with_entries_grown_and_exact_rows() {
    let hb = header(&[("emb", vec![6, 2]), ("w", vec![2, 2])]);
    let hd = parse_header("m.safetensors", &hb).unwrap();
    let rows = format!("emb{GROWN_SUFFIX}");
    let exact = format!("emb{EXACT_SUFFIX}");
    let entries = vec![
        entry("w", vec![2, 2]),
        entry("emb", vec![4, 2]),
        entry(&exact, vec![2, 2]),
        entry(&rows, vec![2, 2]),
    ];
    let by_name: HashMap<&str, usize> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| (e.name.as_str(), i))
        .collect();
    let grown = vec![GrownTensor {
        name: "emb".into(),
        rows: rows.clone(),
    }];
    let x = ExactRows {
        name: "emb".into(),
        rows: exact.clone(),
        indices: vec![0, 3],
    };
    let d = layout_with(grown.clone(), vec![x.clone()]);
    d.check().unwrap();
    let mut used = vec![false; 4];
    let plan = plan_file(&hd, &entries, &by_name, &d, &mut used).unwrap();
    assert_eq!(
        plan,
        [
            TensorPlan {
                entry: 1,
                rows: Some(3),
                exact: Some((2, 0)),
            },
            TensorPlan {
                entry: 0,
                rows: None,
                exact: None,
            }
        ]
    );
    assert_eq!(used, [true; 4]);
    // The same entries twice: refused.
    let e = plan_file(&hd, &entries, &by_name, &d, &mut used).unwrap_err();
    assert!(matches!(e, FolderDeltaError::Tensor { .. }), "{e}");
    // Grown rows that do not add up: refused.
    let mut bad = entries.clone();
    bad[3].shape = vec![1, 2];
    let e = plan_file(&hd, &bad, &by_name, &d, &mut [false; 4]).unwrap_err();
    assert!(e.to_string().contains("do not add up"), "{e}");
    // Exact rows outside the entry, or of another count: refused.
    for indices in [vec![0, 4], vec![1]] {
        let d = layout_with(
            grown.clone(),
            vec![ExactRows {
                indices,
                ..x.clone()
            }],
        );
        let e = plan_file(&hd, &entries, &by_name, &d, &mut [false; 4]).unwrap_err();
        assert!(e.to_string().contains("exact rows"), "{e}");
    }
    // Not grown, and the shapes differ: refused.
    let d = layout_with(Vec::new(), Vec::new());
    let e = plan_file(&hd, &entries, &by_name, &d, &mut [false; 4]).unwrap_err();
    assert!(e.to_string().contains("shape"), "{e}");
    // A tensor the delta lacks: refused.
    let d = layout_with(grown.clone(), Vec::new());
    let e = plan_file(&hd, &entries[..1], &by_name, &d, &mut [false; 1]).unwrap_err();
    assert!(matches!(e, FolderDeltaError::Tensor { .. }), "{e}");
}

#[test]
fn bad_exact_rows_are_refused() {
    let x = ExactRows {
        name: "emb".into(),
        rows: format!("emb{EXACT_SUFFIX}"),
        indices: vec![1, 5],
    };
    let bad = |f: &dyn Fn(&mut ExactRows)| {
        let mut y = x.clone();
        f(&mut y);
        layout_with(Vec::new(), vec![y]).check().unwrap_err()
    };
    layout_with(Vec::new(), vec![x.clone()]).check().unwrap();
    for e in [
        bad(&|y| y.indices = vec![5, 1]),
        bad(&|y| y.indices = vec![1, 1]),
        bad(&|y| y.indices.clear()),
        bad(&|y| y.rows = "emb".into()),
    ] {
        assert!(matches!(e, FolderDeltaError::ExactRows(_)), "{e}");
    }
    let twice = layout_with(Vec::new(), vec![x.clone(), x.clone()]).check();
    assert!(matches!(twice, Err(FolderDeltaError::ExactRows(_))));
    // An exact-rows entry named like a grown tensor's rows entry.
    let g = GrownTensor {
        name: "lm".into(),
        rows: x.rows.clone(),
    };
    let e = layout_with(vec![g], vec![x]).check().unwrap_err();
    assert!(matches!(e, FolderDeltaError::ExactRows(_)), "{e}");
}

#[test]
fn exact_rows_are_scattered_over_the_tensor() {
    let mut out = vec![0u8; 8];
    assert!(scatter_rows(&mut out, &[1, 1, 3, 3], &[0, 2]));
    assert_eq!(out, [1, 1, 0, 0, 3, 3, 0, 0]);
    assert!(!scatter_rows(&mut out, &[1, 1, 3, 3], &[0, 4]));
    assert!(!scatter_rows(&mut out, &[1, 1, 3], &[0, 2]));
    assert!(scatter_rows(&mut out, &[], &[]));
}

#[test]
fn base_rows_are_a_prefix_of_a_bigger_base() {
    let bytes: Vec<u8> = (0..24).collect();
    let shape = [3u64, 2];
    let base = TensorData::new(DType::F32, &shape, &bytes[..]).unwrap();
    let e = entry("emb", vec![2, 2]);
    let b = base_rows(&e, base).unwrap();
    assert_eq!(b.bytes, &bytes[..16]);
    assert_eq!(b.shape, &[2, 2]);
    let same = entry("emb", vec![3, 2]);
    assert_eq!(base_rows(&same, base).unwrap().bytes, &bytes[..]);
    // More rows than the base, other trailing dimensions, other rank: no pairing.
    assert!(base_rows(&entry("emb", vec![4, 2]), base).is_none());
    assert!(base_rows(&entry("emb", vec![2, 3]), base).is_none());
    assert!(base_rows(&entry("emb", vec![6]), base).is_none());
    assert!(base_rows(&entry("emb", vec![]), base).is_none());
}

proptest! {
    /// Scattered block by block, the exact rows land where scattering the whole tensor puts them.
    #[test]
    fn scatter_by_blocks_is_scatter_of_the_whole(
        n_rows in 1usize..40,
        row in 1usize..6,
        picks in proptest::collection::vec(any::<u16>(), 0..20),
        per_block in 1usize..9,
    ) {
        let mut indices: Vec<u64> = picks.iter().map(|&p| u64::from(p) % n_rows as u64).collect();
        indices.sort_unstable();
        indices.dedup();
        let rows: Vec<u8> = (0..indices.len() * row).map(|i| (i % 251) as u8 + 1).collect();
        let mut whole = vec![0u8; n_rows * row];
        prop_assert!(scatter_rows(&mut whole, &rows, &indices));
        let mut blocks = vec![0u8; n_rows * row];
        for (k, block) in blocks.chunks_mut(per_block * row).enumerate() {
            prop_assert!(scatter_rows_within(block, &rows, &indices, (k * per_block) as u64));
        }
        prop_assert_eq!(blocks, whole);
        // Rows of another length than the indices say, or a block of part of a row: refused.
        if indices.len() >= 2 {
            let mut longer = rows.clone();
            longer.push(0);
            prop_assert!(!scatter_rows_within(&mut vec![0u8; row], &longer, &indices, 0));
        }
        if row > 1 && !indices.is_empty() {
            prop_assert!(!scatter_rows_within(&mut vec![0u8; row + 1], &rows, &indices, 0));
        }
    }

    #[test]
    fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = FolderDelta::parse(&bytes);
    }

    #[test]
    fn header_parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = parse_header("x.safetensors", &bytes);
    }

    #[test]
    fn layouts_round_trip(n in 1usize..6, carried in any::<u8>(), len in 0..=crate::folder::patch::MAX_PATCHED_LEN) {
        let sources = [Source::Base, Source::Carried, Source::Tensors, Source::Patched];
        let files: Vec<OutputFile> = (0..n)
            .map(|i| {
                let from = sources[(usize::from(carried) + i) % sources.len()];
                OutputFile {
                    path: format!("f{i}{}", if from == Source::Tensors { ".safetensors" } else { ".json" }),
                    from,
                    len,
                    blake3: (from != Source::Tensors).then(|| h(i as u8)),
                    base_blake3: (from == Source::Patched).then(|| h(100 + i as u8)),
                }
            })
            .collect();
        let format = FolderDelta::format_for(&files).into();
        let d = FolderDelta { format, files, grown: Vec::new(), exact_rows: Vec::new() };
        prop_assert_eq!(FolderDelta::parse(&d.to_bytes()).unwrap(), d);
    }
}

/// A patched file: format 2 and both hashes, a member of at most the patch limit; format 1 refuses
/// it, format 2 without one is refused, and only a patched file may name a base file's hash.
#[test]
fn patched_files_need_format_2_and_their_hashes() {
    use crate::folder::patch::{MAX_PATCHED_LEN, MAX_PATCH_LEN};
    let mut d = sample();
    d.files[2].from = Source::Patched;
    d.files[2].base_blake3 = Some(h(3));
    assert!(matches!(
        d.check(),
        Err(FolderDeltaError::FormatMismatch {
            want: FORMAT_PATCHED,
            ..
        })
    ));
    d.format = FolderDelta::format_for(&d.files).into();
    assert_eq!(d.format, FORMAT_PATCHED);
    d.check().unwrap();
    assert_eq!(FolderDelta::parse(&d.to_bytes()).unwrap(), d);
    assert_eq!(d.files[2].member().unwrap(), "patches/tokenizer.json");

    let members = |patch_len: u64| {
        vec![
            ("delta.bitdelta", 5),
            ("zdn-delta.json", 5),
            ("files/config.json", 10),
            ("headers/model-00001-of-00002.safetensors", 9),
            ("patches/tokenizer.json", patch_len),
        ]
    };
    d.check_members(members(MAX_PATCH_LEN)).unwrap();
    let e = d.check_members(members(MAX_PATCH_LEN + 1)).unwrap_err();
    assert!(e.to_string().contains("over the"), "{e}");

    let mut no_base = d.clone();
    no_base.files[2].base_blake3 = None;
    assert!(no_base.check().is_err());
    let mut too_long = d.clone();
    too_long.files[2].len = MAX_PATCHED_LEN + 1;
    assert!(too_long.check().is_err());
    let mut stray = d.clone();
    stray.files[0].base_blake3 = Some(h(4));
    assert!(stray.check().is_err());
    let mut unpatched = sample();
    unpatched.format = FORMAT_PATCHED.into();
    assert!(matches!(
        unpatched.check(),
        Err(FolderDeltaError::FormatMismatch { want: FORMAT, .. })
    ));
}
