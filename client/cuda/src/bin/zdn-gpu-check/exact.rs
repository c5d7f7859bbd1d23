//! Bit-exactness on the GPU: every case of cases.rs through the kernels (the tensor-at-a-time path of
//! `zdn delta apply --device`), and whole fine_tunes switched on the device, against the CPU reference.

use zdn_cuda::plan::HostBase;
use zdn_cuda::{DeviceFineTunes, Gpu, ResidentModel, TensorReconstructor};
use zdn_protocol::bitdelta::{
    decode_model, encode_model, reconstruct, EmbeddingPolicy, EncodeOptions, Granularity, Metadata,
    ModelTensor, QuantSpec, Selection, TensorData,
};
use zdn_protocol::Hash;

use crate::cases::{grid, small_model, sweeps, Case};

/// Cases run and how many differed.
#[derive(Debug, Default)]
pub struct ExactReport {
    pub cases: usize,
    pub elements: u64,
    /// What `elements` counts.
    pub unit: &'static str,
    pub mismatches: usize,
    pub first: Vec<String>,
    pub note: String,
}

impl ExactReport {
    pub fn describe(&self) -> String {
        let mut s = format!(
            "{} cases, {} {}, {} mismatching{}",
            self.cases, self.elements, self.unit, self.mismatches, self.note
        );
        for f in &self.first {
            s.push_str("\n    ");
            s.push_str(f);
        }
        s
    }

    fn differ(&mut self, what: String) {
        self.mismatches += 1;
        if self.first.len() < 10 {
            eprintln!("MISMATCH {what}");
            self.first.push(what);
        }
    }
}

/// Where `got` and `want` first differ, element by element of `size` bytes.
pub fn first_difference(got: &[u8], want: &[u8], size: usize) -> Option<String> {
    if got == want {
        return None;
    }
    if got.len() != want.len() {
        return Some(format!("{} bytes, expected {}", got.len(), want.len()));
    }
    let i = (0..got.len() / size)
        .find(|i| got[i * size..(i + 1) * size] != want[i * size..(i + 1) * size])?;
    let n = got
        .chunks_exact(size)
        .zip(want.chunks_exact(size))
        .filter(|(a, b)| a != b)
        .count();
    Some(format!(
        "element {i} is {:02x?}, the CPU's {:02x?} ({n} elements differ)",
        &got[i * size..(i + 1) * size],
        &want[i * size..(i + 1) * size]
    ))
}

fn run_case(r: &mut TensorReconstructor, c: &Case, report: &mut ExactReport) -> Result<(), String> {
    let base = TensorData::new(c.base_dtype, &c.entry.shape, &c.base)
        .ok_or_else(|| format!("{}: bad case", c.label))?;
    let n = c.entry.byte_len() as usize;
    let mut want = vec![0u8; n];
    reconstruct(&c.entry, &c.block, Some(&base), &mut want)
        .map_err(|e| format!("{}: CPU: {e}", c.label))?;
    let mut got = vec![0xa5u8; n];
    r.reconstruct(&c.entry, &c.block, Some(&base), &mut got)
        .map_err(|e| format!("{}: GPU: {e}", c.label))?;
    report.cases += 1;
    report.elements += c.entry.numel();
    if let Some(d) = first_difference(&got, &want, c.entry.dtype.size()) {
        report.differ(format!("{}: {d}", c.label));
    }
    Ok(())
}

/// Every grid case and sweep, one tensor at a time.
pub fn tensors(gpu: &Gpu) -> Result<ExactReport, String> {
    let mut r = TensorReconstructor::new(gpu.clone());
    let mut report = ExactReport {
        unit: "elements",
        ..ExactReport::default()
    };
    let cases = grid(0x9e37_79b9_7f4a_7c15);
    let grid_len = cases.len();
    for c in cases.iter().chain(&sweeps()) {
        run_case(&mut r, c, &mut report)?;
    }
    if r.tensors_on_gpu() != report.cases {
        return Err(format!(
            "{} of {} cases ran on the GPU",
            r.tensors_on_gpu(),
            report.cases
        ));
    }
    report.note = format!(
        " ({grid_len}: 9 dtype pairs × 3 bits × 7 scales × 11 shapes with NaN/Inf/subnormal inputs; \
         + 9 sweeps of every f16/bf16 value and f32 rounding boundary)"
    );
    Ok(report)
}

struct Host<'a>(&'a [ModelTensor<'a>]);

impl HostBase for Host<'_> {
    fn tensor(&self, name: &str) -> Option<TensorData<'_>> {
        self.0.iter().find(|t| t.name == name).map(|t| t.data)
    }
}

/// Profiles of the small model in every bits × granularity, switched on the device in turn (and
/// back to the first), each switch's weights downloaded and compared with `decode_model`; the
/// weights must stay in place after the first switch.
pub fn fine_tunes(gpu: &Gpu) -> Result<ExactReport, String> {
    let (base_owned, _) = small_model(0);
    let base: Vec<ModelTensor> = base_owned.iter().map(|t| t.view()).collect();
    let mut resident = ResidentModel::allocate(
        gpu,
        base_owned
            .iter()
            .map(|t| (t.name.clone(), t.dtype, t.shape.clone())),
    )
    .map_err(|e| e.to_string())?;
    for (i, t) in base_owned.iter().enumerate() {
        resident.put(gpu, i, &t.bytes).map_err(|e| e.to_string())?;
    }
    let mut set =
        DeviceFineTunes::new(gpu.clone(), resident, 1 << 30).map_err(|e| e.to_string())?;
    let meta = Metadata {
        base_hash: Hash::ZERO,
        n_params: 0,
        n_quantized: 0,
        bits: 1,
        granularity: Granularity::Tensor,
        clip_sigma: 0.0,
        embeddings: 1,
        model_name: "m".into(),
    };
    let selection = Selection {
        embeddings: EmbeddingPolicy::Quantize,
        ..Selection::default()
    };
    let mut expected = Vec::new();
    let mut seed = 0;
    for bits in [1, 2, 4] {
        for granularity in [
            Granularity::Tensor,
            Granularity::Row,
            Granularity::Group(5),
            Granularity::Group(128),
        ] {
            seed += 1;
            let (_, target_owned) = small_model(seed);
            let target: Vec<ModelTensor> = target_owned.iter().map(|t| t.view()).collect();
            let opts = EncodeOptions {
                spec: QuantSpec {
                    bits,
                    granularity,
                    clip_sigma: None,
                },
                ..EncodeOptions::default()
            };
            let bytes = encode_model(meta.clone(), &base, &target, &selection, &opts)
                .map_err(|e| e.to_string())?;
            let want = decode_model(&bytes, &base).map_err(|e| e.to_string())?;
            let name = format!("{bits}-bit {granularity}");
            set.add(&name, &bytes, &Host(&base))
                .map_err(|e| e.to_string())?;
            expected.push((name, want));
        }
    }
    let mut report = ExactReport {
        unit: "bytes",
        ..ExactReport::default()
    };
    let mut first_addr = None;
    let order: Vec<usize> = (0..expected.len()).chain([0]).collect();
    for (n, &k) in order.iter().enumerate() {
        let (name, want) = &expected[k];
        let sw = set.switch(name).map_err(|e| e.to_string())?;
        if sw.in_place != (n > 0) {
            report.differ(format!("{name}: in_place {} on switch {n}", sw.in_place));
        }
        let addr = set.weight_range("embed_tokens.weight");
        if *first_addr.get_or_insert(addr) != addr {
            report.differ(format!("{name}: the weights moved"));
        }
        for (tensor, bytes) in want {
            let got = set
                .download_weight(tensor)
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("{name}: no weight {tensor}"))?;
            report.cases += 1;
            report.elements += bytes.len() as u64;
            if let Some(d) = first_difference(&got, bytes, 1) {
                report.differ(format!("{name}, {tensor}: {d}"));
            }
        }
    }
    report.note = format!(
        " ({} switches among {} fine_tunes, every tensor of each compared with decode_model)",
        order.len(),
        expected.len()
    );
    Ok(report)
}
