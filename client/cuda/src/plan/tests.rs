//! Tests of the delta plan and its device steps.

#![allow(clippy::unwrap_used, clippy::expect_used)]
use super::*;
use zdn_protocol::bitdelta::{
    encode_model, EncodeOptions, Granularity, Metadata, ModelTensor, QuantSpec, Selection,
    TensorData,
};
use zdn_protocol::Hash;

pub(crate) struct Tensors<'a>(pub &'a [ModelTensor<'a>]);

impl BaseLayout for Tensors<'_> {
    fn find(&self, name: &str) -> Option<(usize, DType, &[u64])> {
        let i = self.0.iter().position(|t| t.name == name)?;
        Some((i, self.0[i].data.dtype, self.0[i].data.shape))
    }
}

fn meta() -> Metadata {
    Metadata {
        base_hash: Hash::ZERO,
        n_params: 0,
        n_quantized: 0,
        bits: 1,
        granularity: Granularity::Row,
        clip_sigma: 0.0,
        embeddings: 0,
        model_name: "t".into(),
    }
}

#[test]
fn arena_offsets_are_aligned_and_packed() {
    let mut a = ArenaLayout::default();
    assert_eq!(a.place(10), Some(0));
    assert_eq!(a.place(0), Some(256));
    assert_eq!(a.place(300), Some(256));
    assert_eq!(a.place(1), Some(768));
    assert_eq!(a.len(), 769);
    let mut full = ArenaLayout { len: u64::MAX - 3 };
    assert_eq!(full.place(1), None);
}

const SHAPE_W: [u64; 2] = [3, 20];
const SHAPE_N: [u64; 1] = [20];

/// A small model's bytes: an f32 matrix "w" with one weight changed, an f16 "norm" with one bit
/// changed, an f16 "same" left as it was.
struct SmallModel {
    base_w: Vec<u8>,
    ft_w: Vec<u8>,
    norm: Vec<u8>,
    ft_norm: Vec<u8>,
}

impl SmallModel {
    fn new() -> Self {
        let base_w: Vec<u8> = (0..60u32)
            .flat_map(|i| (i as f32 * 0.01).to_le_bytes())
            .collect();
        let mut ft_w = base_w.clone();
        ft_w[7] ^= 0x40;
        let norm: Vec<u8> = (0..20u16)
            .flat_map(|i| (0x3c00 + i).to_le_bytes())
            .collect();
        let mut ft_norm = norm.clone();
        ft_norm[3] ^= 1;
        SmallModel {
            base_w,
            ft_w,
            norm,
            ft_norm,
        }
    }

    fn tensors<'a>(w: &'a [u8], norm: &'a [u8], same: &'a [u8]) -> [ModelTensor<'a>; 3] {
        [
            ModelTensor {
                name: "w",
                data: TensorData::new(DType::F32, &SHAPE_W, w).unwrap(),
            },
            ModelTensor {
                name: "norm",
                data: TensorData::new(DType::F16, &SHAPE_N, norm).unwrap(),
            },
            ModelTensor {
                name: "same",
                data: TensorData::new(DType::F16, &SHAPE_N, same).unwrap(),
            },
        ]
    }

    fn base(&self) -> [ModelTensor<'_>; 3] {
        Self::tensors(&self.base_w, &self.norm, &self.norm)
    }

    fn target(&self) -> [ModelTensor<'_>; 3] {
        Self::tensors(&self.ft_w, &self.ft_norm, &self.norm)
    }

    /// The `.bitdelta` of target against base, quantized to 2 bits with a scale per 8 weights.
    fn delta(&self) -> Vec<u8> {
        let opts = EncodeOptions {
            spec: QuantSpec {
                bits: 2,
                granularity: Granularity::Group(8),
                clip_sigma: None,
            },
            ..EncodeOptions::default()
        };
        encode_model(
            meta(),
            &self.base(),
            &self.target(),
            &Selection::default(),
            &opts,
        )
        .unwrap()
    }
}

/// Each encoding gets its operation; the upload holds only blocks and lossless tensors.
#[test]
fn plan_of_a_small_model() {
    let model = SmallModel::new();
    let bytes = model.delta();
    let file = BitDeltaFile::parse(&bytes).unwrap();
    let plan = DeltaPlan::new(&file, &Tensors(&model.base())).unwrap();
    let ops: Vec<&TensorOp> = plan.tensors.iter().map(|t| &t.op).collect();
    let TensorOp::Quantized {
        bits,
        base: 0,
        base_type: FloatType::F32,
        target: FloatType::F32,
        geometry,
        scales_offset: 0,
        codes_offset,
    } = ops[0]
    else {
        panic!("{:?}", ops[0]);
    };
    assert_eq!(*bits, 2);
    assert_eq!(geometry.groups_per_row, 3);
    assert_eq!(*codes_offset, 4 * 9);
    assert_eq!(ops[1], &TensorOp::CopyUpload { offset: 256 });
    assert_eq!(ops[2], &TensorOp::CopyBase { base: 2 });
    assert_eq!(plan.upload_len, 256 + 40);
    assert_eq!(
        plan.tensors
            .iter()
            .map(|t| t.out_offset)
            .collect::<Vec<_>>(),
        [0, 256, 512]
    );
    assert_eq!(plan.weights_len, 512 + 40);
    assert!(plan.same_weights_layout(&plan.clone()));
    // Block (9 scales + 15 code bytes) + 60 f32 read + 240 written; two 40-byte copies.
    assert_eq!(plan.bytes_moved(), 36 + 15 + 240 + 240 + 80 + 80);
}

/// The small model's plan as device steps; an unknown base index and a too-small arena are
/// refused.
#[test]
fn steps_of_a_small_model() {
    let model = SmallModel::new();
    let bytes = model.delta();
    let file = BitDeltaFile::parse(&bytes).unwrap();
    let plan = DeltaPlan::new(&file, &Tensors(&model.base())).unwrap();
    let steps = plan
        .steps(&[(4096, 240), (8192, 40), (12288, 40)], 1 << 20, 1 << 30)
        .unwrap();
    assert_eq!(steps.len(), 3);
    let Step::Launch { params, blocks, .. } = steps[0] else {
        panic!()
    };
    assert_eq!(blocks, 1);
    assert_eq!(
        (params.out, params.base, params.scales, params.codes),
        (1 << 30, 4096, 1 << 20, (1 << 20) + 36)
    );
    assert_eq!(
        steps[1],
        Step::Copy {
            src: (1 << 20) + 256,
            dst: (1 << 30) + 256,
            len: 40
        }
    );
    assert_eq!(
        steps[2],
        Step::Copy {
            src: 12288,
            dst: (1 << 30) + 512,
            len: 40
        }
    );
    assert!(matches!(
        plan.steps(&[(4096, 240), (8192, 40)], 0, 0),
        Err(PlanError::BaseIndex(2))
    ));
    assert!(matches!(
        plan.steps(&[(4096, 200), (8192, 40), (12288, 40)], 0, 0),
        Err(PlanError::ArenaSize { .. })
    ));
}

/// The small model's delta on a base that lacks a tensor, or has another shape, is refused.
#[test]
fn plan_refuses_a_missing_or_misshaped_base() {
    let model = SmallModel::new();
    let bytes = model.delta();
    let file = BitDeltaFile::parse(&bytes).unwrap();
    let base = model.base();
    let e = DeltaPlan::new(&file, &Tensors(&base[..2])).unwrap_err();
    assert!(
        matches!(e, PlanError::Reconstruct(ReconstructError::BaseMissing(ref n)) if n == "same"),
        "{e}"
    );
    let other = [
        base[0],
        ModelTensor {
            name: "norm",
            data: TensorData::new(DType::F16, &[2, 10], &model.norm).unwrap(),
        },
        base[2],
    ];
    let e = DeltaPlan::new(&file, &Tensors(&other)).unwrap_err();
    assert!(
        matches!(
            e,
            PlanError::Reconstruct(ReconstructError::BaseShape { .. })
        ),
        "{e}"
    );
}

/// A non-finite scale in the small model's block is refused.
#[test]
fn plan_refuses_a_non_finite_scale() {
    let model = SmallModel::new();
    let bytes = model.delta();
    let file = BitDeltaFile::parse(&bytes).unwrap();
    let mut bad = bytes.clone();
    let at = file.entries[0].offset as usize + 4;
    bad[at..at + 4].copy_from_slice(&f32::INFINITY.to_le_bytes());
    let e =
        DeltaPlan::new(&BitDeltaFile::parse(&bad).unwrap(), &Tensors(&model.base())).unwrap_err();
    assert!(
        matches!(
            e,
            PlanError::Reconstruct(ReconstructError::Scale { index: 1, .. })
        ),
        "{e}"
    );
}
