//! Rebuilding the parts of a folder delta's output (docs/spec/folder-delta.md): its layout checked
//! against its members, the output's file table, side files (from the base, carried or patched)
//! and each tensor from `delta.bitdelta`. Shared by [`super::apply`] (one delta) and the folder
//! soups of [`crate::soup::folder`] (several deltas of one base, mixed tensor by tensor).

use std::io::Write;
use std::ops::Range;
use std::path::PathBuf;

use zdn_protocol::bitdelta::{
    matrix_of, reconstruct, reconstruct_rows, BitDeltaFile, IndexEntry, TensorData,
};
use zdn_protocol::folder::delta::{
    base_rows, scatter_rows, scatter_rows_within, FolderDelta, FolderDeltaError, OutputFile,
    Source, TensorPlan, LAYOUT_MEMBER, MAX_LAYOUT_LEN,
};
use zdn_protocol::folder::patch::{self, MAX_PATCHED_LEN};
use zdn_protocol::folder::{check_delta, FileEntry, FilePlan};
use zdn_protocol::Hash;

use super::apply::{DeltaSource, FolderApplyError};
use super::base::BaseModel;
use crate::fs::mapped_file::MappedFile;
use crate::fs::object_output::FolderOutput;

/// The delta's layout, checked against its members and `bitdelta` (every entry used once), and
/// the plan of each `tensors` file.
pub(crate) fn checked_layout(
    delta: &DeltaSource<'_>,
    bitdelta: &BitDeltaFile<'_>,
) -> Result<(FolderDelta, Vec<FilePlan>), FolderApplyError> {
    let table = delta.table();
    let layout_len = table
        .iter()
        .find(|m| m.0 == LAYOUT_MEMBER)
        .map_or(0, |m| m.1);
    if layout_len > MAX_LAYOUT_LEN as u64 {
        return Err(FolderDeltaError::TooLarge(layout_len as usize).into());
    }
    let layout_bytes = delta.read_member(LAYOUT_MEMBER)?;
    // A header that cannot be read is reported as what went wrong (a store or disk error), not
    // as a malformed delta.
    let mut read_error = None;
    let checked = check_delta(&table, &layout_bytes, bitdelta, &mut |p| {
        delta.read_member(p).map_err(|e| {
            read_error = Some(e);
            FolderDeltaError::MissingMember(p.into())
        })
    });
    if let (Err(_), Some(e)) = (&checked, read_error) {
        return Err(e);
    }
    Ok(checked?)
}

/// The output's file table (offsets in canonical order) and its total length.
pub(crate) fn output_entries(
    layout: &FolderDelta,
) -> Result<(Vec<FileEntry>, u64), FolderApplyError> {
    let mut entries = Vec::with_capacity(layout.files.len());
    let mut offset = 0u64;
    for f in &layout.files {
        entries.push(FileEntry {
            path: f.path.clone(),
            offset,
            len: f.len,
        });
        offset = offset
            .checked_add(f.len)
            .ok_or(FolderApplyError::Overflow)?;
    }
    Ok((entries, offset))
}

/// Writes a file that is not a `tensors` file: the base's (its length and hash checked), a
/// carried member (its hash checked) or a patched one.
pub(crate) fn write_side_file(
    out: &mut FolderOutput,
    f: &OutputFile,
    base: &dyn BaseModel,
    delta: &DeltaSource<'_>,
) -> Result<(), FolderApplyError> {
    match f.from {
        Source::Patched => return write_patched(out, f, base, delta),
        Source::Tensors => return Err(FolderDeltaError::MissingMember(f.path.clone()).into()),
        Source::Base | Source::Carried => {}
    }
    let mut w = HashingWriter::new(out);
    if f.from == Source::Base {
        let found = base.file_len(&f.path);
        if found != Some(f.len) {
            return Err(FolderApplyError::BaseFile {
                path: f.path.clone(),
                found,
                want: f.len,
            });
        }
        base.write_file(&f.path, &mut w)?;
    } else {
        delta.write_member(&format!("files/{}", f.path), &mut w)?;
    }
    let actual = w.finish();
    if let Some(expected) = f.blake3.filter(|h| *h != actual) {
        return Err(FolderApplyError::FileHash {
            path: f.path.clone(),
            expected,
            actual,
        });
    }
    Ok(())
}

/// A `patched` file: the base's file of the same path (its BLAKE3 the layout's `base_blake3`)
/// and the member `patches/<path>`, rebuilt in memory (both at most 64 MiB) and written after its
/// BLAKE3 is checked.
pub(super) fn write_patched(
    out: &mut FolderOutput,
    f: &OutputFile,
    base: &dyn BaseModel,
    delta: &DeltaSource<'_>,
) -> Result<(), FolderApplyError> {
    let base_problem = |problem: String| FolderApplyError::PatchBase {
        path: f.path.clone(),
        problem,
    };
    let old = base
        .small_file(&f.path, MAX_PATCHED_LEN)?
        .ok_or_else(|| base_problem(format!("is missing or over {MAX_PATCHED_LEN} bytes")))?;
    let member = f.member().unwrap_or_default();
    let bytes = patch::rebuild_file(f, &old, &delta.read_member(&member)?).map_err(|error| {
        FolderApplyError::Patched {
            path: f.path.clone(),
            error,
        }
    })?;
    out.write_all(&bytes).map_err(|cause| FolderApplyError::Io {
        path: PathBuf::from(&f.path),
        cause,
    })
}

/// A parsed `.bitdelta` and the map its bytes live in.
pub(crate) struct MappedDelta<'a> {
    pub(crate) file: &'a BitDeltaFile<'a>,
    map: &'a MappedFile,
}

impl<'a> MappedDelta<'a> {
    pub(crate) fn new(file: &'a BitDeltaFile<'a>, map: &'a MappedFile) -> Self {
        MappedDelta { file, map }
    }

    /// Entry `i` reconstructed into `buf`; its block's pages are dropped from the resident set
    /// afterwards, so that walking the delta keeps one block resident, not the whole file.
    pub(crate) fn reconstruct_into(
        &self,
        buf: &mut Vec<u8>,
        i: usize,
        base: Option<&zdn_protocol::bitdelta::TensorData<'_>>,
    ) -> Result<(), FolderApplyError> {
        reconstruct_into(buf, self.file, i, base)?;
        let e = &self.file.entries[i];
        // Offset and length were checked against the file's length by the parser.
        self.map
            .release(e.offset as usize..e.offset.saturating_add(e.length) as usize);
        Ok(())
    }
}

impl MappedDelta<'_> {
    /// Entry `i`'s block (checked against the file's length by the parser).
    pub(crate) fn block(&self, i: usize) -> &[u8] {
        self.file.block(i)
    }

    /// Drops entry `i`'s block from the resident set, once it has been used.
    pub(crate) fn release(&self, i: usize) {
        let e = &self.file.entries[i];
        self.map
            .release(e.offset as usize..e.offset.saturating_add(e.length) as usize);
    }
}

/// Which part of a tensor's rebuild: its entry (against the base's rows), or the new rows of a
/// grown tensor (no base).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Part {
    Main,
    NewRows,
}

/// Buffers reused from tensor to tensor.
#[derive(Default)]
pub(crate) struct Scratch {
    base: Vec<u8>,
    rows: Vec<u8>,
    block: Vec<u8>,
}

/// Elements rebuilt at a time when a tensor is written a block of rows at a time.
const ROWS_BLOCK: u64 = 1 << 20;

/// A quantized entry rebuilt a block of rows at a time, so that a caller holds the base's tensor
/// and one block instead of the whole rebuilt tensor: the main part of a tensor whose entry is
/// quantized with rows that start on whole bytes of codes, against a base tensor of its shape (a
/// decoder delta's projections and vocabulary matrices). Its rows are those of [`rebuild_part`].
pub(crate) struct RowsOf<'a> {
    delta: &'a MappedDelta<'a>,
    entry: usize,
    /// The rows kept exactly, and where they go.
    exact: Option<(Vec<u8>, &'a [u64])>,
}

impl<'a> RowsOf<'a> {
    /// Part `part` of `t` by rows against `base` (the base's rows for its entry), when it can be;
    /// `None` for any other part, which [`rebuild_part`] rebuilds whole.
    pub(crate) fn new(
        delta: &'a MappedDelta<'a>,
        layout: &'a FolderDelta,
        t: &TensorPlan,
        part: Part,
        base: &TensorData<'_>,
    ) -> Result<Option<Self>, FolderApplyError> {
        let e = &delta.file.entries[t.entry];
        if part != Part::Main
            || !rows_apart(e)
            || !base.dtype.is_quantizable()
            || base.shape != e.shape.as_slice()
        {
            return Ok(None);
        }
        let exact = match t.exact {
            Some((r, x)) => {
                let mut rows = Vec::new();
                delta.reconstruct_into(&mut rows, r, None)?;
                Some((rows, layout.exact_rows[x].indices.as_slice()))
            }
            None => None,
        };
        Ok(Some(RowsOf {
            delta,
            entry: t.entry,
            exact,
        }))
    }

    /// Rows `rows` of the rebuilt tensor into `out` (resized to them), from `base`, the base
    /// tensor given to [`Self::new`]: reconstructed, then the exact rows among them written over.
    pub(crate) fn rows_into(
        &self,
        base: &TensorData<'_>,
        rows: Range<u64>,
        out: &mut Vec<u8>,
    ) -> Result<(), FolderApplyError> {
        let e = &self.delta.file.entries[self.entry];
        let (_, cols) = matrix_of(&e.shape);
        // `new` checked the base against the entry's shape: these products are within its length.
        let (base_row, out_row) = (
            cols as usize * base.dtype.size(),
            cols as usize * e.dtype.size(),
        );
        let (r0, r1) = (rows.start as usize, rows.end as usize);
        let len = (r1 - r0) * out_row;
        out.clear();
        out.try_reserve_exact(len)
            .map_err(|_| FolderApplyError::TooLarge {
                name: e.name.clone(),
                bytes: len as u64,
            })?;
        out.resize(len, 0);
        let block = self.delta.block(self.entry);
        let base_part = base
            .bytes
            .get(r0 * base_row..r1 * base_row)
            .ok_or_else(|| FolderApplyError::Rows(e.name.clone()))?;
        if !reconstruct_rows(e, block, base.dtype, base_part, rows.clone(), out)? {
            return Err(FolderApplyError::Rows(e.name.clone()));
        }
        if let Some((exact, indices)) = &self.exact {
            if !scatter_rows_within(out, exact, indices, rows.start) {
                return Err(FolderDeltaError::ExactRows(e.name.clone()).into());
            }
        }
        Ok(())
    }

    /// Drops the entry's block from the resident set, once the tensor is written.
    pub(crate) fn release(&self) {
        self.delta.release(self.entry);
    }
}

/// Whether entry `e` can be rebuilt a block of rows at a time: quantized, a matrix, a float, rows
/// that start on whole bytes of codes.
fn rows_apart(e: &IndexEntry) -> bool {
    let (_, cols) = matrix_of(&e.shape);
    let whole_bytes = e
        .encoding
        .bits()
        .is_some_and(|bits| cols.saturating_mul(u64::from(bits)).is_multiple_of(8));
    whole_bytes && e.shape.len() >= 2 && cols > 0 && e.dtype.is_quantizable()
}

/// Part `part` of tensor `t` handed to `write` a block of rows at a time when it can be (see
/// [`RowsOf`]). False, nothing written, for any other part, which [`rebuild_part`] rebuilds
/// whole.
pub(crate) fn write_by_rows(
    delta: &MappedDelta<'_>,
    layout: &FolderDelta,
    base: &dyn BaseModel,
    t: &TensorPlan,
    part: Part,
    scratch: &mut Scratch,
    write: &mut dyn FnMut(&[u8]) -> Result<(), FolderApplyError>,
) -> Result<bool, FolderApplyError> {
    let e = &delta.file.entries[t.entry];
    if part != Part::Main || !rows_apart(e) {
        return Ok(false);
    }
    let Scratch {
        base: base_buf,
        block,
        ..
    } = scratch;
    let Some(b) = base
        .tensor(&e.name, base_buf)?
        .and_then(|b| base_rows(e, b))
    else {
        // Rebuilt whole, where the missing or mismatched base is reported.
        base.release(&e.name);
        return Ok(false);
    };
    let Some(by_rows) = RowsOf::new(delta, layout, t, part, &b)? else {
        base.release(&e.name);
        return Ok(false);
    };
    let (rows, cols) = matrix_of(&e.shape);
    let step = (ROWS_BLOCK / cols).max(1);
    let mut r0 = 0u64;
    while r0 < rows {
        let r1 = r0.saturating_add(step).min(rows);
        by_rows.rows_into(&b, r0..r1, block)?;
        write(block)?;
        r0 = r1;
    }
    base.release(&e.name);
    by_rows.release();
    Ok(true)
}

/// The delta entry that holds part `part` of tensor `t`, if the tensor has that part.
pub(crate) fn part_entry(t: &TensorPlan, part: Part) -> Option<usize> {
    match part {
        Part::Main => Some(t.entry),
        Part::NewRows => t.rows,
    }
}

/// Part `part` of tensor `t` rebuilt into `buf`: its entry reconstructed (against the base's
/// tensor where the encoding needs one) and its exact rows written over it. False (and `buf`
/// untouched) when the tensor has no such part.
pub(crate) fn rebuild_part(
    delta: &MappedDelta<'_>,
    layout: &FolderDelta,
    base: &dyn BaseModel,
    t: &TensorPlan,
    part: Part,
    buf: &mut Vec<u8>,
    scratch: &mut Scratch,
) -> Result<bool, FolderApplyError> {
    let Some(i) = part_entry(t, part) else {
        return Ok(false);
    };
    let e = &delta.file.entries[i];
    let b = if part == Part::Main && e.encoding.needs_base() {
        base.tensor(&e.name, &mut scratch.base)?
            .and_then(|b| base_rows(e, b))
    } else {
        None
    };
    rebuild_with_base(delta, layout, t, part, b.as_ref(), buf, &mut scratch.rows)?;
    base.release(&e.name);
    Ok(true)
}

/// [`rebuild_part`] with the base's rows for the tensor already read (`base`: what
/// [`base_rows`] gives for its entry, `None` for new rows or a tensor the base lacks), for
/// callers that rebuild one tensor from several deltas and read the base once. `rows` is scratch
/// for the exact rows.
pub(crate) fn rebuild_with_base(
    delta: &MappedDelta<'_>,
    layout: &FolderDelta,
    t: &TensorPlan,
    part: Part,
    base: Option<&zdn_protocol::bitdelta::TensorData<'_>>,
    buf: &mut Vec<u8>,
    rows: &mut Vec<u8>,
) -> Result<bool, FolderApplyError> {
    let Some(i) = part_entry(t, part) else {
        return Ok(false);
    };
    let e = &delta.file.entries[i];
    let base = base.filter(|_| part == Part::Main && e.encoding.needs_base());
    delta.reconstruct_into(buf, i, base)?;
    if let Some((r, x)) = t.exact.filter(|_| part == Part::Main) {
        delta.reconstruct_into(rows, r, None)?;
        let indices = &layout.exact_rows[x].indices;
        if !scatter_rows(buf, rows, indices) {
            return Err(FolderDeltaError::ExactRows(e.name.clone()).into());
        }
    }
    Ok(true)
}

/// Entry `i` reconstructed into `buf` (resized to its byte length).
fn reconstruct_into(
    buf: &mut Vec<u8>,
    bitdelta: &BitDeltaFile<'_>,
    i: usize,
    base: Option<&zdn_protocol::bitdelta::TensorData<'_>>,
) -> Result<(), FolderApplyError> {
    let e = &bitdelta.entries[i];
    buf.clear();
    // byte_len is capped by the parser (MAX_TENSOR_BYTES, 1 TiB): a size this machine cannot hold
    // is a clear error, not an abort.
    let n = e.byte_len() as usize;
    buf.try_reserve_exact(n)
        .map_err(|_| FolderApplyError::TooLarge {
            name: e.name.clone(),
            bytes: e.byte_len(),
        })?;
    buf.resize(n, 0);
    reconstruct(e, bitdelta.block(i), base, buf)?;
    Ok(())
}

/// A writer that hashes what passes through it.
pub(crate) struct HashingWriter<'w> {
    inner: &'w mut dyn Write,
    hasher: blake3::Hasher,
}

impl<'w> HashingWriter<'w> {
    pub(crate) fn new(inner: &'w mut dyn Write) -> Self {
        HashingWriter {
            inner,
            hasher: blake3::Hasher::new(),
        }
    }

    pub(crate) fn finish(self) -> Hash {
        self.hasher.finalize().into()
    }
}

impl Write for HashingWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
