//! Reconstruction bandwidth on large tensors: bytes the kernel moves (base read, block read, output
//! written) ÷ its device time, against a device-to-device copy of the output's size in the same run
//! (which reads and writes that many bytes: 2 × size moved). Each tensor's GPU output is also checked
//! against the CPU reference once.

use zdn_cuda::kernel::{FloatType, Geometry, KernelParams};
use zdn_cuda::Gpu;
use zdn_protocol::bitdelta::{reconstruct, Encoding, Granularity, IndexEntry, TensorData};
use zdn_protocol::DType;

use crate::cases::{encode, Rng};
use crate::exact::first_difference;

#[derive(Debug)]
pub struct BandwidthRow {
    pub label: String,
    pub bytes_moved: u64,
    pub kernel_ms: f64,
    pub copy_bytes_moved: u64,
    pub copy_ms: f64,
    pub exact: bool,
}

impl BandwidthRow {
    pub fn kernel_bytes_per_sec(&self) -> f64 {
        self.bytes_moved as f64 / (self.kernel_ms / 1e3)
    }

    pub fn copy_bytes_per_sec(&self) -> f64 {
        self.copy_bytes_moved as f64 / (self.copy_ms / 1e3)
    }

    pub fn ratio(&self) -> f64 {
        self.kernel_bytes_per_sec() / self.copy_bytes_per_sec()
    }

    pub fn describe(&self) -> String {
        format!(
            "{}: {:.3} ms, {:.0} GB/s; copy {:.3} ms, {:.0} GB/s; ratio {:.2} (goal ≥ 0.7: {})",
            self.label,
            self.kernel_ms,
            self.kernel_bytes_per_sec() / 1e9,
            self.copy_ms,
            self.copy_bytes_per_sec() / 1e9,
            self.ratio(),
            if self.ratio() >= 0.7 {
                "met"
            } else {
                "NOT met"
            }
        )
    }
}

/// The median of `v` (sorted in place).
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// `n` elements of `d`: small random weights.
pub fn random_weights(rng: &mut Rng, d: DType, n: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(n as usize * d.size());
    for _ in 0..n {
        encode(d, rng.unit() * 0.05, &mut v);
    }
    v
}

/// A quantized entry of `shape` and a random block for it (scales small and positive).
pub fn random_block(
    rng: &mut Rng,
    dtype: DType,
    bits: u32,
    granularity: Granularity,
    shape: &[u64],
) -> Option<(IndexEntry, Vec<u8>)> {
    let g = Geometry::new(shape, granularity)?;
    let mut block = Vec::new();
    for _ in 0..g.n_scales() {
        block.extend((rng.unit().abs() * 0.01).to_le_bytes());
    }
    let codes = (g.numel * u64::from(bits)).div_ceil(8);
    block.reserve(codes as usize);
    for _ in 0..codes.div_ceil(8) {
        block.extend(rng.next().to_le_bytes());
    }
    block.truncate(block.len() - (codes.div_ceil(8) * 8 - codes) as usize);
    let used = (g.numel * u64::from(bits) % 8) as u32;
    if let (Some(last), true) = (block.last_mut(), used != 0) {
        *last &= ((1u16 << used) - 1) as u8;
    }
    Some((
        IndexEntry {
            name: "w".into(),
            dtype,
            shape: shape.to_vec(),
            encoding: Encoding::for_bits(bits)?,
            granularity,
            offset: 0,
            length: block.len() as u64,
        },
        block,
    ))
}

fn one(
    gpu: &Gpu,
    rng: &mut Rng,
    (bits, dtype, granularity, shape): (u32, DType, Granularity, &[u64]),
    reps: usize,
) -> Result<BandwidthRow, String> {
    let e = |e: zdn_cuda::GpuError| e.to_string();
    let ft = FloatType::of(dtype).ok_or("not a float type")?;
    let base = random_weights(rng, dtype, shape.iter().product());
    let (entry, block) = random_block(rng, dtype, bits, granularity, shape).ok_or("no block")?;
    let geometry = Geometry::new(shape, granularity).ok_or("empty")?;
    let scale_bytes = geometry.n_scales() * 4;
    let out_len = entry.byte_len();
    let mut base_buf = gpu.alloc(base.len() as u64).map_err(e)?;
    gpu.upload(&mut base_buf, 0, &base).map_err(e)?;
    let mut block_buf = gpu.alloc(block.len() as u64).map_err(e)?;
    gpu.upload(&mut block_buf, 0, &block).map_err(e)?;
    let mut out_buf = gpu.alloc(out_len).map_err(e)?;
    let block_addr = gpu.addr(&block_buf);
    let params = KernelParams::new(
        &geometry,
        gpu.addr(&out_buf),
        gpu.addr(&base_buf),
        block_addr,
        block_addr + scale_bytes,
    );
    // SAFETY: the three buffers hold the tensor's base elements, its whole block and its output
    // (sizes from the same shape and dtype); they live until the end of this function, and every
    // timing below waits for its work.
    let launch = || unsafe { gpu.launch(bits, ft, ft, geometry.blocks(), &params) };
    launch().map_err(e)?; // warm-up (the first launch of a kernel pays for loading it)
    gpu.sync().map_err(e)?;
    let mut got = vec![0u8; out_len as usize];
    gpu.download_into(&out_buf, 0, &mut got).map_err(e)?;
    let mut want = vec![0u8; out_len as usize];
    let b = TensorData::new(dtype, shape, &base).ok_or("bad base")?;
    reconstruct(&entry, &block, Some(&b), &mut want).map_err(|x| x.to_string())?;
    let diff = first_difference(&got, &want, dtype.size());
    if let Some(d) = &diff {
        eprintln!("MISMATCH bandwidth tensor: {d}");
    }
    let mut kernel = Vec::new();
    let mut copy = Vec::new();
    for _ in 0..reps {
        kernel.push(gpu.time_ms(launch).map_err(e)?);
        copy.push(
            gpu.time_ms(|| gpu.copy(&base_buf, 0, &mut out_buf, 0, out_len))
                .map_err(e)?,
        );
    }
    Ok(BandwidthRow {
        label: format!("{dtype}→{dtype} {bits}-bit {granularity} {shape:?}"),
        bytes_moved: base.len() as u64 + block.len() as u64 + out_len,
        kernel_ms: median(&mut kernel),
        copy_bytes_moved: 2 * out_len,
        copy_ms: median(&mut copy),
        exact: diff.is_none(),
    })
}

/// The bandwidth table: the 7B model's two large shapes, each bit width, each scale granularity,
/// each dtype.
pub fn bandwidth(gpu: &Gpu, quick: bool) -> Result<Vec<BandwidthRow>, String> {
    let reps = if quick { 5 } else { 20 };
    let mut rng = Rng(42);
    let (emb, mlp): (&[u64], &[u64]) = (&[32000, 4096], &[11008, 4096]);
    let configs: [(u32, DType, Granularity, &[u64]); 8] = [
        (1, DType::BF16, Granularity::Row, emb),
        (1, DType::BF16, Granularity::Row, mlp),
        (1, DType::BF16, Granularity::Tensor, mlp),
        (1, DType::BF16, Granularity::Group(128), mlp),
        (2, DType::BF16, Granularity::Row, mlp),
        (4, DType::BF16, Granularity::Row, mlp),
        (1, DType::F16, Granularity::Row, mlp),
        (1, DType::F32, Granularity::Row, mlp),
    ];
    configs
        .into_iter()
        .map(|c| one(gpu, &mut rng, c, reps))
        .collect()
}
