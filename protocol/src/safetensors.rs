//! Parsing and writing the safetensors container (header only: the data stays where it is, so a caller
//! can memory-map a model and walk it tensor by tensor).
//!
//! Layout: u64 little-endian header length N, N bytes of JSON `{name: {dtype, shape, data_offsets}, ...,
//! "__metadata__": {..}}`, then the data section. Offsets are relative to the data section.

use std::collections::BTreeMap;
use std::ops::Range;

use crate::dtype::DType;

/// Largest JSON header accepted, as in the reference implementation: a header is a table of contents,
/// and a bigger one is an attack or a corrupt file.
pub const MAX_HEADER_LEN: u64 = 100 * 1024 * 1024;

/// Largest rank accepted for a tensor.
pub const MAX_RANK: usize = 8;

/// One tensor in a safetensors file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<u64>,
    /// Absolute byte range in the file.
    pub range: Range<usize>,
}

impl TensorInfo {
    pub fn numel(&self) -> u64 {
        self.shape.iter().product()
    }
}

/// The parsed table of contents of a safetensors file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SafetensorsHeader {
    /// Tensors in the order their data appears in the file.
    pub tensors: Vec<TensorInfo>,
    pub metadata: BTreeMap<String, String>,
    /// Absolute offset of the data section.
    pub data_start: usize,
}

impl SafetensorsHeader {
    pub fn get(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Largest tensor in bytes (0 for an empty file).
    pub fn largest_tensor_bytes(&self) -> usize {
        self.tensors
            .iter()
            .map(|t| t.range.len())
            .max()
            .unwrap_or(0)
    }
}

/// What is wrong with a safetensors file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SafetensorsError {
    #[error("file is {0} bytes, too short for a safetensors header (needs at least 8)")]
    TooShort(usize),
    #[error("header length {len} exceeds the limit of {MAX_HEADER_LEN} bytes")]
    HeaderTooLarge { len: u64 },
    #[error("header length {len} points past the end of the {file_len}-byte file")]
    HeaderPastEnd { len: u64, file_len: usize },
    #[error("header is not valid JSON: {0}")]
    Json(String),
    #[error("header is not a JSON object")]
    NotAnObject,
    #[error("tensor {name:?}: {problem}")]
    Tensor { name: String, problem: String },
    #[error("tensors {a:?} and {b:?} overlap in the data section")]
    Overlap { a: String, b: String },
    #[error("__metadata__ must be an object of strings")]
    Metadata,
}

fn tensor_err(name: &str, problem: impl Into<String>) -> SafetensorsError {
    SafetensorsError::Tensor {
        name: name.to_owned(),
        problem: problem.into(),
    }
}

/// The header's top-level entries in file order. serde_json's maps keep the last of two equal keys;
/// a header that names a tensor twice is ambiguous, so it is refused here instead.
fn parse_entries(json: &[u8]) -> Result<Vec<(String, serde_json::Value)>, SafetensorsError> {
    struct Entries(Vec<(String, serde_json::Value)>);

    impl<'de> serde::Deserialize<'de> for Entries {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> serde::de::Visitor<'de> for V {
                type Value = Entries;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("a JSON object")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    mut map: A,
                ) -> Result<Entries, A::Error> {
                    let mut out: Vec<(String, serde_json::Value)> = Vec::new();
                    let mut seen = std::collections::HashSet::new();
                    while let Some((k, v)) = map.next_entry::<String, serde_json::Value>()? {
                        if !seen.insert(k.clone()) {
                            return Err(serde::de::Error::custom(format!(
                                "duplicate key {k:?} in the header"
                            )));
                        }
                        out.push((k, v));
                    }
                    Ok(Entries(out))
                }
            }
            d.deserialize_map(V)
        }
    }

    // Distinguish "not an object" from malformed JSON, as before.
    let value: serde_json::Value =
        serde_json::from_slice(json).map_err(|e| SafetensorsError::Json(e.to_string()))?;
    if !value.is_object() {
        return Err(SafetensorsError::NotAnObject);
    }
    serde_json::from_slice::<Entries>(json)
        .map(|e| e.0)
        .map_err(|e| SafetensorsError::Json(e.to_string()))
}

/// Parses and validates the header of a whole safetensors file held in `file` (e.g. a memory map).
/// Every tensor's byte range is checked against its dtype, shape and the file size.
pub fn parse(file: &[u8]) -> Result<SafetensorsHeader, SafetensorsError> {
    parse_parts(file, None)
}

/// Parses a header kept apart from its data: `header` holds at least the length field and the
/// JSON; every tensor's byte range is checked against a data section of `data_len` bytes.
pub fn parse_with_data_len(
    header: &[u8],
    data_len: usize,
) -> Result<SafetensorsHeader, SafetensorsError> {
    parse_parts(header, Some(data_len))
}

/// [`parse`] of a whole file (`data_len` `None`: the data section is the rest of `file`), or of a
/// header alone with the data section's length given.
fn parse_parts(
    file: &[u8],
    data_len: Option<usize>,
) -> Result<SafetensorsHeader, SafetensorsError> {
    let len_bytes: [u8; 8] = file
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or(SafetensorsError::TooShort(file.len()))?;
    let header_len = u64::from_le_bytes(len_bytes);
    if header_len > MAX_HEADER_LEN {
        return Err(SafetensorsError::HeaderTooLarge { len: header_len });
    }
    let data_start = usize::try_from(header_len)
        .ok()
        .and_then(|l| l.checked_add(8))
        .filter(|&end| end <= file.len())
        .ok_or(SafetensorsError::HeaderPastEnd {
            len: header_len,
            file_len: file.len(),
        })?;
    let obj = parse_entries(&file[8..data_start])?;
    let data_len = data_len.unwrap_or(file.len() - data_start);
    // Every range below is data_start + at most data_len: it must fit.
    if data_start.checked_add(data_len).is_none() {
        return Err(SafetensorsError::HeaderPastEnd {
            len: header_len,
            file_len: file.len(),
        });
    }

    let mut metadata = BTreeMap::new();
    let mut tensors = Vec::with_capacity(obj.len());
    for (name, v) in &obj {
        if name == "__metadata__" {
            let m = v.as_object().ok_or(SafetensorsError::Metadata)?;
            for (k, v) in m {
                metadata.insert(
                    k.clone(),
                    v.as_str().ok_or(SafetensorsError::Metadata)?.to_owned(),
                );
            }
            continue;
        }
        tensors.push(parse_tensor(name, v, data_start, data_len)?);
    }
    tensors.sort_by_key(|t| (t.range.start, t.range.end));
    for w in tensors.windows(2) {
        if w[1].range.start < w[0].range.end {
            return Err(SafetensorsError::Overlap {
                a: w[0].name.clone(),
                b: w[1].name.clone(),
            });
        }
    }
    Ok(SafetensorsHeader {
        tensors,
        metadata,
        data_start,
    })
}

fn parse_tensor(
    name: &str,
    v: &serde_json::Value,
    data_start: usize,
    data_len: usize,
) -> Result<TensorInfo, SafetensorsError> {
    let o = v
        .as_object()
        .ok_or_else(|| tensor_err(name, "entry is not an object"))?;
    let dtype_name = o
        .get("dtype")
        .and_then(|d| d.as_str())
        .ok_or_else(|| tensor_err(name, "missing dtype"))?;
    let dtype = DType::from_safetensors_name(dtype_name)
        .ok_or_else(|| tensor_err(name, format!("unsupported dtype {dtype_name:?}")))?;
    let shape_v = o
        .get("shape")
        .and_then(|s| s.as_array())
        .ok_or_else(|| tensor_err(name, "missing shape"))?;
    if shape_v.len() > MAX_RANK {
        return Err(tensor_err(
            name,
            format!("rank {} exceeds {MAX_RANK}", shape_v.len()),
        ));
    }
    let shape = shape_v
        .iter()
        .map(|d| d.as_u64())
        .collect::<Option<Vec<u64>>>()
        .ok_or_else(|| tensor_err(name, "shape is not a list of non-negative integers"))?;
    let offs = o
        .get("data_offsets")
        .and_then(|s| s.as_array())
        .filter(|a| a.len() == 2)
        .ok_or_else(|| tensor_err(name, "data_offsets must be [begin, end]"))?;
    let (begin, end) = match (offs[0].as_u64(), offs[1].as_u64()) {
        (Some(b), Some(e)) if b <= e => (b, e),
        _ => {
            return Err(tensor_err(
                name,
                "data_offsets must be [begin, end] with begin <= end",
            ))
        }
    };
    if end > data_len as u64 {
        return Err(tensor_err(
            name,
            format!("data ends at {end}, past the {data_len}-byte data section"),
        ));
    }
    let expect = shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .and_then(|n| n.checked_mul(dtype.size() as u64))
        .ok_or_else(|| tensor_err(name, "shape overflows"))?;
    if expect != end - begin {
        return Err(tensor_err(
            name,
            format!(
                "shape {shape:?} of {dtype} needs {expect} bytes, data_offsets give {}",
                end - begin
            ),
        ));
    }
    // Both fit in usize: end <= data_len, and data_start + data_len fits (checked by the caller).
    let range = (data_start + begin as usize)..(data_start + end as usize);
    Ok(TensorInfo {
        name: name.to_owned(),
        dtype,
        shape,
        range,
    })
}

/// A tensor to be written: its layout, not its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorLayout {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<u64>,
}

impl TensorLayout {
    pub fn byte_len(&self) -> Option<u64> {
        self.shape
            .iter()
            .try_fold(self.dtype.size() as u64, |acc, &d| acc.checked_mul(d))
    }
}

/// Builds the header (length prefix + JSON, padded with spaces so the data section starts 8-aligned)
/// for tensors written back to back in the given order. Returns the header bytes and each tensor's
/// length. Deterministic: the same layouts give the same bytes.
pub fn encode_header(
    tensors: &[TensorLayout],
    metadata: &BTreeMap<String, String>,
) -> Result<(Vec<u8>, Vec<u64>), SafetensorsError> {
    let mut json = String::from("{");
    let mut first = true;
    if !metadata.is_empty() {
        json.push_str("\"__metadata__\":");
        json.push_str(
            &serde_json::to_string(metadata).map_err(|e| SafetensorsError::Json(e.to_string()))?,
        );
        first = false;
    }
    let mut offset = 0u64;
    let mut lens = Vec::with_capacity(tensors.len());
    for t in tensors {
        let len = t
            .byte_len()
            .ok_or_else(|| tensor_err(&t.name, "shape overflows"))?;
        let end = offset
            .checked_add(len)
            .ok_or_else(|| tensor_err(&t.name, "data section overflows"))?;
        if !first {
            json.push(',');
        }
        first = false;
        let name =
            serde_json::to_string(&t.name).map_err(|e| SafetensorsError::Json(e.to_string()))?;
        let shape: Vec<String> = t.shape.iter().map(|d| d.to_string()).collect();
        json.push_str(&format!(
            "{name}:{{\"dtype\":\"{}\",\"shape\":[{}],\"data_offsets\":[{offset},{end}]}}",
            t.dtype.safetensors_name(),
            shape.join(",")
        ));
        lens.push(len);
        offset = end;
    }
    json.push('}');
    while (json.len() + 8) % 8 != 0 {
        json.push(' ');
    }
    let mut out = Vec::with_capacity(json.len() + 8);
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(json.as_bytes());
    Ok((out, lens))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with_header(json: &str, data_len: usize) -> Vec<u8> {
        let mut f = (json.len() as u64).to_le_bytes().to_vec();
        f.extend_from_slice(json.as_bytes());
        f.resize(f.len() + data_len, 0);
        f
    }

    #[test]
    fn duplicate_keys_are_refused() {
        let t = r#"{"dtype":"F32","shape":[1],"data_offsets":[0,4]}"#;
        let f = file_with_header(&format!(r#"{{"a":{t},"a":{t}}}"#), 4);
        let e = parse(&f).unwrap_err();
        assert!(e.to_string().contains("duplicate key \"a\""), "{e}");
        let m = r#"{"k":"v"}"#;
        let f = file_with_header(
            &format!(r#"{{"__metadata__":{m},"a":{t},"__metadata__":{m}}}"#),
            4,
        );
        assert!(parse(&f).unwrap_err().to_string().contains("duplicate"));
        let f = file_with_header(&format!(r#"{{"a":{t}}}"#), 4);
        assert_eq!(parse(&f).unwrap().tensors.len(), 1);
        assert!(matches!(
            parse(&file_with_header("[1]", 0)),
            Err(SafetensorsError::NotAnObject)
        ));
    }

    #[test]
    fn round_trip() {
        let layouts = vec![
            TensorLayout {
                name: "b".into(),
                dtype: DType::F32,
                shape: vec![2, 3],
            },
            TensorLayout {
                name: "a\"x".into(),
                dtype: DType::BF16,
                shape: vec![5],
            },
            TensorLayout {
                name: "s".into(),
                dtype: DType::I64,
                shape: vec![],
            },
        ];
        let mut meta = BTreeMap::new();
        meta.insert("format".to_owned(), "pt".to_owned());
        let (h, lens) = encode_header(&layouts, &meta).unwrap();
        assert_eq!(h.len() % 8, 0);
        assert_eq!(lens, vec![24, 10, 8]);
        let mut file = h.clone();
        file.resize(h.len() + 42, 7);
        let parsed = parse(&file).unwrap();
        assert_eq!(parsed.metadata, meta);
        let names: Vec<_> = parsed.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, vec!["b", "a\"x", "s"]);
        assert_eq!(parsed.tensors[1].range, h.len() + 24..h.len() + 34);
        assert_eq!(parsed.data_start, h.len());
    }

    #[test]
    fn bad_headers_are_named() {
        assert_eq!(parse(&[1, 2]), Err(SafetensorsError::TooShort(2)));
        let mut f = u64::MAX.to_le_bytes().to_vec();
        f.extend_from_slice(b"{}");
        assert!(matches!(
            parse(&f),
            Err(SafetensorsError::HeaderTooLarge { .. })
        ));
        let mut f = 100u64.to_le_bytes().to_vec();
        f.extend_from_slice(b"{}");
        assert!(matches!(
            parse(&f),
            Err(SafetensorsError::HeaderPastEnd { .. })
        ));
        assert!(matches!(
            parse(&file_with_header("{nope", 0)),
            Err(SafetensorsError::Json(_))
        ));
        assert_eq!(
            parse(&file_with_header("[1]", 0)),
            Err(SafetensorsError::NotAnObject)
        );
        let e = parse(&file_with_header(
            r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}"#,
            8,
        ))
        .unwrap_err();
        assert!(e.to_string().contains("needs 8 bytes"), "{e}");
        let e = parse(&file_with_header(
            r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
            4,
        ))
        .unwrap_err();
        assert!(e.to_string().contains("past the"), "{e}");
        let e = parse(&file_with_header(
            r#"{"w":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,8]}}"#,
            8,
        ))
        .unwrap_err();
        assert!(e.to_string().contains("overflows"), "{e}");
        let e = parse(&file_with_header(
            r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}}"#,
            8,
        ))
        .unwrap_err();
        assert!(matches!(e, SafetensorsError::Overlap { .. }));
        let e = parse(&file_with_header(
            r#"{"a":{"dtype":"Q4","shape":[4],"data_offsets":[0,4]}}"#,
            8,
        ))
        .unwrap_err();
        assert!(e.to_string().contains("unsupported dtype"), "{e}");
    }
}
