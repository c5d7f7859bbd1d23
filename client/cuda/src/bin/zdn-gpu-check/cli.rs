//! The real `zdn` binary: `zdn delta apply --device cuda:N` writes the same file as on the CPU.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use zdn_protocol::bitdelta::{
    encode_model, EmbeddingPolicy, EncodeOptions, Granularity, Metadata, ModelTensor, QuantSpec,
    Selection,
};
use zdn_protocol::safetensors::{encode_header, TensorLayout};
use zdn_protocol::Hash;

use crate::cases::{small_model, Owned};

fn safetensors(tensors: &[Owned]) -> Result<Vec<u8>, String> {
    let layouts: Vec<TensorLayout> = tensors
        .iter()
        .map(|t| TensorLayout {
            name: t.name.clone(),
            dtype: t.dtype,
            shape: t.shape.clone(),
        })
        .collect();
    let (mut out, _) = encode_header(&layouts, &BTreeMap::new()).map_err(|e| e.to_string())?;
    for t in tensors {
        out.extend_from_slice(&t.bytes);
    }
    Ok(out)
}

fn apply(zdn: &Path, dir: &Path, device: &str, out: &Path) -> Result<String, String> {
    let o = Command::new(zdn)
        .args(["delta", "apply", "--json", "--device", device, "--base"])
        .arg(dir.join("base.safetensors"))
        .arg("--delta")
        .arg(dir.join("ft.bitdelta"))
        .arg("-o")
        .arg(out)
        .output()
        .map_err(|e| format!("running {}: {e}", zdn.display()))?;
    if !o.status.success() {
        return Err(format!(
            "zdn delta apply --device {device} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// (same bytes, what was compared).
pub fn apply_matches_cpu(zdn: &Path, device: usize) -> Result<(bool, String), String> {
    let dir = std::env::temp_dir().join(format!("zdn-gpu-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let result = (|| {
        let (base, target) = small_model(3);
        let base_file = safetensors(&base)?;
        let views: Vec<ModelTensor> = base.iter().map(|t| t.view()).collect();
        let tviews: Vec<ModelTensor> = target.iter().map(|t| t.view()).collect();
        let meta = Metadata {
            base_hash: Hash::of(&base_file),
            n_params: 0,
            n_quantized: 0,
            bits: 2,
            granularity: Granularity::Group(5),
            clip_sigma: 0.0,
            embeddings: 1,
            model_name: "gpu-check".into(),
        };
        let opts = EncodeOptions {
            spec: QuantSpec {
                bits: 2,
                granularity: Granularity::Group(5),
                clip_sigma: None,
            },
            ..EncodeOptions::default()
        };
        let selection = Selection {
            embeddings: EmbeddingPolicy::Quantize,
            ..Selection::default()
        };
        let delta =
            encode_model(meta, &views, &tviews, &selection, &opts).map_err(|e| e.to_string())?;
        std::fs::write(dir.join("base.safetensors"), &base_file).map_err(|e| e.to_string())?;
        std::fs::write(dir.join("ft.bitdelta"), &delta).map_err(|e| e.to_string())?;
        let (cpu, gpu) = (dir.join("cpu.safetensors"), dir.join("gpu.safetensors"));
        apply(zdn, &dir, "cpu", &cpu)?;
        let report = apply(zdn, &dir, &format!("cuda:{device}"), &gpu)?;
        let a = std::fs::read(&cpu).map_err(|e| e.to_string())?;
        let b = std::fs::read(&gpu).map_err(|e| e.to_string())?;
        let on_gpu = report.contains("\"tensors_on_device\": 4");
        Ok((
            a == b && on_gpu,
            format!(
                "{} and {} bytes, {}; 4 of 9 tensors reconstructed on the GPU: {on_gpu}",
                a.len(),
                b.len(),
                if a == b { "identical" } else { "DIFFERENT" }
            ),
        ))
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}
