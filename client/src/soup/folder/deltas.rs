//! Folder soups of folder deltas: every component's tensors rebuilt (exact rows in place) and
//! mixed against the base's, tensor by tensor, into the fine-tune's layout.

use std::io::Write;
use std::ops::Range;

use zdn_protocol::bitdelta::{BitDeltaFile, TensorData};
use zdn_protocol::folder::delta::{base_rows, FolderDelta, Source};
use zdn_protocol::folder::FilePlan;
use zdn_protocol::{DType, Hash};

use super::{mixed, row_elements, BlockSink, FolderSoupError, Job};
use crate::delta::folder::apply::{DeltaSource, FolderApplyError, FolderApplyReport};
use crate::delta::folder::base::BaseModel;
use crate::delta::folder::rebuild::{
    checked_layout, output_entries, part_entry, rebuild_with_base, write_side_file, MappedDelta,
    Part, RowsOf,
};
use crate::fs::object_output::FolderOutput;
use crate::fs::progress::Progress;
use crate::soup::tensor::to_f32;

/// One folder delta of the soup, opened.
struct OpenDelta<'m> {
    hash: Hash,
    mapped: MappedDelta<'m>,
    layout: FolderDelta,
    plans: Vec<FilePlan>,
}

pub(super) fn mix_deltas(
    job: &Job<'_>,
    hashes: &[Hash],
) -> Result<FolderApplyReport, FolderSoupError> {
    let Job {
        store,
        base,
        weights,
        output,
        progress,
    } = *job;
    let mut sources = Vec::with_capacity(hashes.len());
    for h in hashes {
        sources.push(DeltaSource::store(store, h, output)?);
    }
    let maps = sources
        .iter()
        .map(DeltaSource::bitdelta_map)
        .collect::<Result<Vec<_>, _>>()?;
    let files = maps
        .iter()
        .map(|m| BitDeltaFile::parse(m.bytes()).map_err(FolderApplyError::from))
        .collect::<Result<Vec<_>, _>>()?;
    let mut open = Vec::with_capacity(hashes.len());
    for ((h, source), (file, map)) in hashes.iter().zip(&sources).zip(files.iter().zip(&maps)) {
        let (found, want) = (file.meta.base_hash, base.object_hash());
        if found != want {
            return Err(FolderApplyError::WrongBase {
                expected: found,
                actual: want,
            }
            .into());
        }
        let (layout, plans) = checked_layout(source, file)?;
        open.push(OpenDelta {
            hash: *h,
            mapped: MappedDelta::new(file, map),
            layout,
            plans,
        });
    }
    let Some(first) = open.first() else {
        return Err(FolderSoupError::Tensor {
            name: String::new(),
            problem: "a soup needs at least one component".into(),
        });
    };
    for d in &open[1..] {
        same_folder(first, d)?;
    }
    let (entries, total) = output_entries(&first.layout)?;
    let mut out = FolderOutput::create(output, &entries, false).map_err(FolderApplyError::from)?;
    let bar = Progress::new(total, "soup", progress);
    let mut plan_at = 0;
    let mut tensors = 0;
    for f in &first.layout.files {
        if f.from == Source::Tensors {
            tensors += write_mixed_file(&mut out, &open, plan_at, base, weights)?;
            plan_at += 1;
        } else {
            write_side_file(&mut out, f, base, &sources[0])?;
        }
        bar.inc(f.len);
    }
    out.commit().map_err(FolderApplyError::from)?;
    bar.finish();
    Ok(FolderApplyReport {
        output: output.to_owned(),
        files: first.layout.files.len(),
        tensors,
        bytes_written: total,
        base_hash: base.object_hash(),
        base_verified: true,
    })
}

/// Two deltas rebuild the same folder apart from tensor values: the same files (side files the
/// same bytes), the same grown tensors, the same shard headers and tensors in each. Which rows
/// each keeps exactly may differ (a rebuilt tensor has them in place).
fn same_folder(first: &OpenDelta<'_>, d: &OpenDelta<'_>) -> Result<(), FolderSoupError> {
    let mismatch = |problem: String| FolderSoupError::Mismatch {
        component: d.hash,
        first: first.hash,
        problem,
    };
    if d.layout.files != first.layout.files {
        let path = d
            .layout
            .files
            .iter()
            .zip(&first.layout.files)
            .find(|(a, b)| a != b)
            .map_or("the file list".to_string(), |(a, _)| a.path.clone());
        return Err(mismatch(format!("{path} differs")));
    }
    if d.layout.grown != first.layout.grown {
        return Err(mismatch("the grown tensors differ".into()));
    }
    for (p, q) in first.plans.iter().zip(&d.plans) {
        let path = &first.layout.files[p.file].path;
        if p.header_bytes != q.header_bytes {
            return Err(mismatch(format!("{path}: the shard header differs")));
        }
        let names = |o: &OpenDelta<'_>, plan: &FilePlan| -> Vec<(String, bool)> {
            plan.tensors
                .iter()
                .map(|t| {
                    (
                        o.mapped.file.entries[t.entry].name.clone(),
                        t.rows.is_some(),
                    )
                })
                .collect()
        };
        if names(first, p) != names(d, q) {
            return Err(mismatch(format!("{path}: the tensors differ")));
        }
    }
    Ok(())
}

/// One component's rebuilt tensor while it is mixed: rebuilt whole beforehand, or a block of rows
/// at a time as the mix asks for them ([`RowsOf`]), so that the soup holds a block of it, not the
/// tensor.
enum Rebuilt<'a> {
    Whole(Vec<u8>),
    Rows(RowsOf<'a>),
}

/// Writes the `plan_at`-th tensors file: its header, then each tensor mixed from every
/// component's rebuild. Returns the number of tensors.
fn write_mixed_file(
    out: &mut FolderOutput,
    open: &[OpenDelta<'_>],
    plan_at: usize,
    base: &dyn BaseModel,
    weights: &[f64],
) -> Result<usize, FolderSoupError> {
    let first = &open[0];
    let plan = &first.plans[plan_at];
    let io = |cause| FolderApplyError::Io {
        path: first.layout.files[plan.file].path.clone().into(),
        cause,
    };
    out.write_all(&plan.header_bytes).map_err(io)?;
    let mut bufs = vec![Vec::new(); open.len()];
    let (mut base_buf, mut rows) = (Vec::new(), Vec::new());
    for (k, t) in plan.tensors.iter().enumerate() {
        for part in [Part::Main, Part::NewRows] {
            let Some(i) = part_entry(t, part) else {
                continue;
            };
            let e = &first.mapped.file.entries[i];
            // The base's rows of the tensor, read once for every component.
            let b = match part {
                Part::Main => base
                    .tensor(&e.name, &mut base_buf)
                    .map_err(FolderApplyError::from)?
                    .and_then(|b| base_rows(e, b)),
                Part::NewRows => None,
            };
            let mixing = b.filter(|b| b.shape == e.shape.as_slice());
            let mut rebuilt = Vec::with_capacity(open.len());
            for (d, buf) in open.iter().zip(bufs.iter_mut()) {
                let tp = &d.plans[plan_at].tensors[k];
                let by_rows = match &mixing {
                    Some(b) => RowsOf::new(&d.mapped, &d.layout, tp, part, b)?,
                    None => None,
                };
                if let Some(r) = by_rows {
                    rebuilt.push(Rebuilt::Rows(r));
                } else if rebuild_with_base(
                    &d.mapped,
                    &d.layout,
                    tp,
                    part,
                    b.as_ref(),
                    buf,
                    &mut rows,
                )? {
                    rebuilt.push(Rebuilt::Whole(std::mem::take(buf)));
                } else {
                    return Err(FolderSoupError::Mismatch {
                        component: d.hash,
                        first: first.hash,
                        problem: format!("{} has no new rows", e.name),
                    });
                }
            }
            let mut sink = |block: &[u8]| Ok(out.write_all(block).map_err(io)?);
            mix_rebuilt(
                &e.name,
                e.dtype,
                mixing.as_ref(),
                &rebuilt,
                weights,
                &mut sink,
            )?;
            for (r, buf) in rebuilt.into_iter().zip(bufs.iter_mut()) {
                match r {
                    Rebuilt::Whole(v) => *buf = v,
                    Rebuilt::Rows(r) => r.release(),
                }
            }
            base.release(&e.name);
        }
    }
    Ok(plan.tensors.len())
}

/// A tensor rebuilt by every component, mixed, handed to `sink`: a float tensor with a base
/// tensor of its shape from the components' deltas against it (a block of rows at a time); any
/// other (no base, or not a float) must be the same bytes in every component, and is copied.
fn mix_rebuilt(
    name: &str,
    dtype: DType,
    base: Option<&TensorData<'_>>,
    rebuilt: &[Rebuilt<'_>],
    weights: &[f64],
    sink: &mut BlockSink<'_>,
) -> Result<(), FolderSoupError> {
    let bad = |problem: String| FolderSoupError::Tensor {
        name: name.to_owned(),
        problem,
    };
    if let Some(b) = base.filter(|b| dtype.is_quantizable() && b.dtype.is_quantizable()) {
        let (size, base_size) = (dtype.size(), b.dtype.size());
        let want = b.bytes.len() / base_size * size;
        let wrong_length = |r: &Rebuilt<'_>| matches!(r, Rebuilt::Whole(v) if v.len() != want);
        if rebuilt.iter().any(wrong_length) {
            return Err(bad(
                "a component rebuilds it with another length than the base's".into(),
            ));
        }
        let cols = row_elements(b.shape);
        let mut scratch = Vec::new();
        let mut delta = |i: usize, range: Range<usize>, base: &[f32]| {
            let bytes: &[u8] = match &rebuilt[i] {
                Rebuilt::Whole(part) => part
                    .get(range.start * size..range.end * size)
                    .ok_or_else(|| bad("a component rebuilds it with another length".into()))?,
                Rebuilt::Rows(r) => {
                    let rows = (range.start / cols) as u64..(range.end / cols) as u64;
                    r.rows_into(b, rows, &mut scratch)?;
                    &scratch
                }
            };
            let w = to_f32(dtype, bytes).unwrap_or_default();
            Ok(w.iter().zip(base).map(|(w, b)| w - b).collect())
        };
        return mixed(name, dtype, b, weights, &mut delta, sink);
    }
    let whole: Vec<&Vec<u8>> = rebuilt
        .iter()
        .filter_map(|r| match r {
            Rebuilt::Whole(v) => Some(v),
            Rebuilt::Rows(_) => None,
        })
        .collect();
    match whole.split_first() {
        Some((first, rest)) if whole.len() == rebuilt.len() && rest.iter().all(|r| r == first) => {
            sink(first)
        }
        _ => Err(bad(if base.is_none() {
            "has no base tensor to mix against (new rows, or a tensor the base lacks), and the components rebuild it differently".into()
        } else {
            "is not a float tensor, and the components rebuild it differently".into()
        })),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::soup::folder::MIX_BLOCK;
    use crate::soup::tensor::{from_f32, target_bytes};
    use zdn_protocol::soup::weighted_sum;

    /// [`super::mix_rebuilt`]'s blocks, gathered.
    fn mix_rebuilt(
        name: &str,
        dtype: DType,
        base: Option<&TensorData<'_>>,
        rebuilt: &[Vec<u8>],
        weights: &[f64],
    ) -> Result<Vec<u8>, FolderSoupError> {
        let mut out = Vec::new();
        let mut sink = |b: &[u8]| {
            out.extend_from_slice(b);
            Ok(())
        };
        let rebuilt: Vec<Rebuilt<'_>> = rebuilt.iter().cloned().map(Rebuilt::Whole).collect();
        super::mix_rebuilt(name, dtype, base, &rebuilt, weights, &mut sink)?;
        Ok(out)
    }

    /// A tensor of several blocks is mixed as one: the same bytes as the whole-tensor arithmetic.
    #[test]
    fn blocks_mix_as_the_whole_tensor() {
        let (rows, cols) = (3usize, MIX_BLOCK / 2 + 3);
        let n = rows * cols;
        let gen = |seed: u32| -> Vec<f32> {
            (0..n as u32)
                .map(|i| ((i.wrapping_mul(2_654_435_761) ^ seed) % 2001) as f32 / 1000.0 - 1.0)
                .collect()
        };
        let base_vals = gen(1);
        let base_bytes = from_f32(DType::BF16, &base_vals).unwrap();
        let shape = [rows as u64, cols as u64];
        let base = TensorData::new(DType::BF16, &shape, &base_bytes).unwrap();
        let parts: Vec<Vec<u8>> = [2, 3]
            .iter()
            .map(|&s| {
                let v: Vec<f32> = gen(s).iter().map(|x| x * 0.01).collect();
                let w: Vec<f32> = to_f32(DType::BF16, &base_bytes)
                    .unwrap()
                    .iter()
                    .zip(&v)
                    .map(|(b, d)| b + d)
                    .collect();
                from_f32(DType::BF16, &w).unwrap()
            })
            .collect();
        let weights = [0.7, -0.2];
        let got = mix_rebuilt("t", DType::F32, Some(&base), &parts, &weights);
        // A part rebuilt in another length than the base's is refused.
        assert!(got.is_err());
        let got = mix_rebuilt("t", DType::BF16, Some(&base), &parts, &weights).unwrap();
        let b = to_f32(DType::BF16, &base_bytes).unwrap();
        let deltas: Vec<Vec<f32>> = parts
            .iter()
            .map(|p| {
                to_f32(DType::BF16, p)
                    .unwrap()
                    .iter()
                    .zip(&b)
                    .map(|(w, b)| w - b)
                    .collect()
            })
            .collect();
        let refs: Vec<&[f32]> = deltas.iter().map(Vec::as_slice).collect();
        let whole = weighted_sum(&refs, &weights).unwrap();
        assert_eq!(got, target_bytes(DType::BF16, &base, &whole).unwrap());
        assert!(n > 2 * MIX_BLOCK / 2 && cols < MIX_BLOCK);
    }

    #[test]
    fn without_a_base_the_components_must_agree() {
        let a = vec![1u8, 2, 3, 4];
        assert_eq!(
            mix_rebuilt("t", DType::BF16, None, &[a.clone(), a.clone()], &[0.5, 0.5]).unwrap(),
            a
        );
        let e = mix_rebuilt(
            "t",
            DType::BF16,
            None,
            &[a.clone(), vec![1, 2, 3, 5]],
            &[0.5, 0.5],
        );
        assert!(e.unwrap_err().to_string().contains("no base tensor"));
        let e = mix_rebuilt(
            "t",
            DType::I64,
            None,
            &[vec![0; 8], vec![1; 8]],
            &[0.5, 0.5],
        );
        assert!(e.is_err());
    }
}
