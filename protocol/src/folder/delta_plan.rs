//! The plan of one `tensors` file of a folder delta (docs/spec/folder-delta.md): which entries
//! of `delta.bitdelta` rebuild each tensor of the file's header, in data order, checked against
//! the header — dtype, shape, a grown tensor's rows adding up, exact rows fitting their entry —
//! with every entry used at most once.

use std::collections::HashMap;

use super::delta::{tensor_err, FolderDelta, FolderDeltaError};
use crate::bitdelta::IndexEntry;
use crate::safetensors::SafetensorsHeader;

/// How one tensor of an output file is rebuilt: entry `entry` of `delta.bitdelta` (with its exact
/// rows written over it), then (for a grown tensor) entry `rows`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TensorPlan {
    pub entry: usize,
    pub rows: Option<usize>,
    /// Rows kept exactly: the entry holding them, and the index into [`FolderDelta::exact_rows`].
    pub exact: Option<(usize, usize)>,
}

/// The plan of one `tensors` file: for each tensor of `header`, in data order, the entries that
/// rebuild it, checked against the header (dtype, shape; a grown tensor's rows add up). Marks the
/// entries used in `used` (one flag per entry of `entries`) and refuses an entry used twice.
pub fn plan_file(
    header: &SafetensorsHeader,
    entries: &[IndexEntry],
    by_name: &HashMap<&str, usize>,
    delta: &FolderDelta,
    used: &mut [bool],
) -> Result<Vec<TensorPlan>, FolderDeltaError> {
    let grown = delta.grown_map();
    let exact: HashMap<&str, usize> = delta
        .exact_rows
        .iter()
        .enumerate()
        .map(|(i, x)| (x.name.as_str(), i))
        .collect();
    let mut take = |name: &str, want: &str| -> Result<usize, FolderDeltaError> {
        let i = *by_name
            .get(name)
            .ok_or_else(|| tensor_err(want, format!("delta.bitdelta has no entry {name:?}")))?;
        let flag = used
            .get_mut(i)
            .ok_or_else(|| tensor_err(name, "entry out of range"))?;
        if std::mem::replace(flag, true) {
            return Err(tensor_err(name, "used twice by the fine-tune's files"));
        }
        Ok(i)
    };
    let mut plan = Vec::with_capacity(header.tensors.len());
    for t in &header.tensors {
        let entry = take(&t.name, &t.name)?;
        let e = &entries[entry];
        if e.dtype != t.dtype {
            return Err(tensor_err(
                &t.name,
                format!("the header says {}, the delta {}", t.dtype, e.dtype),
            ));
        }
        let rows = match grown.get(t.name.as_str()) {
            None if e.shape == t.shape => None,
            None => {
                return Err(tensor_err(
                    &t.name,
                    format!(
                        "the header says shape {:?}, the delta {:?}",
                        t.shape, e.shape
                    ),
                ))
            }
            Some(rows_name) => {
                let r = take(rows_name, &t.name)?;
                check_grown(&t.name, &t.shape, e, &entries[r])?;
                Some(r)
            }
        };
        let exact = match exact.get(t.name.as_str()) {
            None => None,
            Some(&x) => {
                let spec = &delta.exact_rows[x];
                let r = take(&spec.rows, &t.name)?;
                check_exact(&t.name, e, &entries[r], &spec.indices)?;
                Some((r, x))
            }
        };
        plan.push(TensorPlan { entry, rows, exact });
    }
    Ok(plan)
}

/// A tensor's exact rows: an entry of the same dtype and trailing dimensions with one row per
/// index, every index inside the tensor's entry.
fn check_exact(
    name: &str,
    e: &IndexEntry,
    rows: &IndexEntry,
    indices: &[u64],
) -> Result<(), FolderDeltaError> {
    let ok = !e.shape.is_empty()
        && rows.dtype == e.dtype
        && rows.shape.len() == e.shape.len()
        && rows.shape[1..] == e.shape[1..]
        && rows.shape[0] == indices.len() as u64
        && indices.last().is_some_and(|&last| last < e.shape[0]);
    if ok {
        Ok(())
    } else {
        Err(tensor_err(
            name,
            format!(
                "its exact rows (entry {:?}, {} indices) do not fit its entry {:?}",
                rows.shape,
                indices.len(),
                e.shape
            ),
        ))
    }
}

/// A grown tensor's two entries: same dtype and trailing dimensions as the header's tensor, rows
/// adding up to its leading dimension, the first entry non-empty in rows.
fn check_grown(
    name: &str,
    shape: &[u64],
    common: &IndexEntry,
    new_rows: &IndexEntry,
) -> Result<(), FolderDeltaError> {
    let ok = !shape.is_empty()
        && new_rows.dtype == common.dtype
        && common.shape.len() == shape.len()
        && new_rows.shape.len() == shape.len()
        && common.shape[1..] == shape[1..]
        && new_rows.shape[1..] == shape[1..]
        && common.shape[0].checked_add(new_rows.shape[0]) == Some(shape[0])
        && new_rows.shape[0] > 0;
    if ok {
        Ok(())
    } else {
        Err(tensor_err(
            name,
            format!(
                "grown to {shape:?}: its entries {:?} and {:?} do not add up",
                common.shape, new_rows.shape
            ),
        ))
    }
}
