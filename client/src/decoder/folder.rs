//! The weights of a Hugging Face model folder: `model.safetensors`, or shards listed by
//! `model.safetensors.index.json` (`{"weight_map": {tensor: "model-0000k-of-0000n.safetensors"}}`),
//! each memory-mapped. Tensors are found by name across shards without reading their data. (The
//! folder as the store sees it, every file, is [`crate::model::folder::ModelFolder`].)

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use zdn_protocol::bitdelta::TensorData;
use zdn_protocol::folder::shard_index::ShardIndex;
use zdn_protocol::folder::MAX_SHARD_INDEX_LEN;
use zdn_protocol::safetensors::TensorInfo;

use crate::model::file::{ModelFile, ModelFileError};

/// The index file of a sharded checkpoint.
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// The weights file of an unsharded checkpoint.
pub const SINGLE_FILE: &str = "model.safetensors";
/// Most shards accepted.
const MAX_SHARDS: usize = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum FolderError {
    #[error("{0} has neither {INDEX_FILE} nor {SINGLE_FILE}")]
    NoWeights(PathBuf),
    #[error("{path}: {problem}")]
    Index { path: PathBuf, problem: String },
    #[error(transparent)]
    Shard(#[from] ModelFileError),
    #[error("{index} names tensor {tensor:?} in {shard}, which lacks it")]
    MissingInShard {
        index: PathBuf,
        tensor: String,
        shard: String,
    },
}

/// A model folder's weights: its shards and where each tensor is.
#[derive(Debug)]
pub struct FolderWeights {
    pub dir: PathBuf,
    /// Shard file names, as the index lists them (sorted).
    pub shard_names: Vec<String>,
    pub shards: Vec<ModelFile>,
    /// Tensor name → (shard, position in that shard's header).
    location: HashMap<String, (usize, usize)>,
    /// Tensor names in shard order, then header order.
    names: Vec<String>,
}

impl FolderWeights {
    pub fn open(dir: &Path) -> Result<Self, FolderError> {
        let index = dir.join(INDEX_FILE);
        if index.is_file() {
            Self::open_sharded(dir, &index)
        } else if dir.join(SINGLE_FILE).is_file() {
            Self::from_shards(dir, vec![SINGLE_FILE.to_owned()], None)
        } else {
            Err(FolderError::NoWeights(dir.to_owned()))
        }
    }

    fn open_sharded(dir: &Path, index: &Path) -> Result<Self, FolderError> {
        let err = |problem: String| FolderError::Index {
            path: index.to_owned(),
            problem,
        };
        let len = std::fs::metadata(index)
            .map_err(|e| err(e.to_string()))?
            .len();
        if len > MAX_SHARD_INDEX_LEN as u64 {
            return Err(err(format!(
                "{len} bytes, over the {MAX_SHARD_INDEX_LEN}-byte limit of a shard index"
            )));
        }
        let bytes = std::fs::read(index).map_err(|e| err(e.to_string()))?;
        // The protocol's reading of an index (a tensor listed twice is refused, not overwritten).
        let weight_map: BTreeMap<String, String> = ShardIndex::parse(&bytes)
            .map_err(err)?
            .weight_map
            .into_iter()
            .collect();
        let mut shard_names: Vec<String> = weight_map.values().cloned().collect();
        shard_names.sort();
        shard_names.dedup();
        if shard_names.is_empty() {
            return Err(err("the weight_map is empty".into()));
        }
        if shard_names.len() > MAX_SHARDS {
            return Err(err(format!(
                "{} shards (at most {MAX_SHARDS})",
                shard_names.len()
            )));
        }
        for s in &shard_names {
            check_shard_name(s).map_err(err)?;
        }
        Self::from_shards(dir, shard_names, Some((index, &weight_map)))
    }

    fn from_shards(
        dir: &Path,
        shard_names: Vec<String>,
        index: Option<(&Path, &BTreeMap<String, String>)>,
    ) -> Result<Self, FolderError> {
        let mut shards = Vec::with_capacity(shard_names.len());
        for s in &shard_names {
            shards.push(ModelFile::open(&dir.join(s))?);
        }
        let mut location = HashMap::new();
        let mut names = Vec::new();
        match index {
            None => {
                for (j, t) in shards[0].header.tensors.iter().enumerate() {
                    location.insert(t.name.clone(), (0, j));
                    names.push(t.name.clone());
                }
            }
            Some((index, map)) => {
                // Per shard, its tensors by name, to resolve the map without quadratic search.
                let by_name: Vec<HashMap<&str, usize>> = shards
                    .iter()
                    .map(|m| {
                        m.header
                            .tensors
                            .iter()
                            .enumerate()
                            .map(|(j, t)| (t.name.as_str(), j))
                            .collect()
                    })
                    .collect();
                let mut located = Vec::with_capacity(map.len());
                for (tensor, shard) in map {
                    let missing = || FolderError::MissingInShard {
                        index: index.to_owned(),
                        tensor: tensor.clone(),
                        shard: shard.clone(),
                    };
                    // shard_names was collected from this map, so the search succeeds.
                    let i = shard_names.binary_search(shard).map_err(|_| missing())?;
                    let j = by_name[i]
                        .get(tensor.as_str())
                        .copied()
                        .ok_or_else(missing)?;
                    located.push((i, j, tensor.clone()));
                }
                located.sort();
                for (i, j, name) in located {
                    location.insert(name.clone(), (i, j));
                    names.push(name);
                }
            }
        }
        Ok(FolderWeights {
            dir: dir.to_owned(),
            shard_names,
            shards,
            location,
            names,
        })
    }

    /// Tensor names in storage order (shard by shard).
    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn get(&self, name: &str) -> Option<(&ModelFile, &TensorInfo)> {
        let &(i, j) = self.location.get(name)?;
        let shard = &self.shards[i];
        Some((shard, &shard.header.tensors[j]))
    }

    /// A tensor's bytes, dtype and shape (validated by the safetensors parser).
    pub fn data(&self, name: &str) -> Option<TensorData<'_>> {
        self.get(name).map(|(m, t)| m.data(t))
    }

    /// Drops the resident pages of a tensor once it has been used.
    pub fn release(&self, name: &str) {
        if let Some((m, t)) = self.get(name) {
            m.release(t);
        }
    }

    /// Bytes of all shards.
    pub fn weight_bytes(&self) -> u64 {
        self.shards.iter().map(|s| s.file.len() as u64).sum()
    }

    /// Elements of the tensors the folder lists.
    pub fn n_params(&self) -> u64 {
        self.names
            .iter()
            .filter_map(|n| self.get(n))
            .map(|(_, t)| t.numel())
            .sum()
    }
}

/// A shard is a plain file name in the folder: no path separators, no `..`, a `.safetensors` name.
fn check_shard_name(s: &str) -> Result<(), String> {
    let plain = !s.is_empty()
        && !s.contains(['/', '\\', '\0'])
        && s != "."
        && s != ".."
        && s.ends_with(".safetensors");
    if plain {
        Ok(())
    } else {
        Err(format!(
            "shard {s:?} is not a plain .safetensors file name in the folder"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use zdn_protocol::safetensors::{encode_header, TensorLayout};
    use zdn_protocol::DType;

    fn write_shard(path: &Path, tensors: &[(&str, Vec<f32>)]) {
        let layouts: Vec<TensorLayout> = tensors
            .iter()
            .map(|(n, v)| TensorLayout {
                name: (*n).to_owned(),
                dtype: DType::F32,
                shape: vec![v.len() as u64],
            })
            .collect();
        let (mut file, _) = encode_header(&layouts, &BTreeMap::new()).unwrap();
        for (_, v) in tensors {
            file.extend(v.iter().flat_map(|x| x.to_le_bytes()));
        }
        std::fs::write(path, file).unwrap();
    }

    fn sharded(dir: &Path) {
        write_shard(
            &dir.join("model-00001-of-00002.safetensors"),
            &[("b", vec![1.0, 2.0]), ("a", vec![3.0])],
        );
        write_shard(
            &dir.join("model-00002-of-00002.safetensors"),
            &[("c", vec![4.0, 5.0, 6.0])],
        );
        std::fs::write(
            dir.join(INDEX_FILE),
            r#"{"metadata": {"total_size": 24}, "weight_map": {"a": "model-00001-of-00002.safetensors",
               "b": "model-00001-of-00002.safetensors", "c": "model-00002-of-00002.safetensors"}}"#,
        )
        .unwrap();
    }

    #[test]
    fn tensors_are_found_across_shards() {
        let d = tempfile::tempdir().unwrap();
        sharded(d.path());
        let f = FolderWeights::open(d.path()).unwrap();
        assert_eq!(f.names(), ["b", "a", "c"]);
        assert_eq!(f.data("c").unwrap().bytes.len(), 12);
        assert_eq!(f.data("a").unwrap().bytes, 3f32.to_le_bytes());
        assert!(f.get("d").is_none());
        assert_eq!(f.n_params(), 6);
        assert_eq!(f.shard_names.len(), 2);
    }

    #[test]
    fn a_single_file_folder_is_read() {
        let d = tempfile::tempdir().unwrap();
        write_shard(&d.path().join(SINGLE_FILE), &[("x", vec![1.0])]);
        let f = FolderWeights::open(d.path()).unwrap();
        assert_eq!(f.names(), ["x"]);
    }

    #[test]
    fn bad_folders_and_indexes_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let e = FolderWeights::open(d.path()).unwrap_err().to_string();
        assert!(e.contains("neither"), "{e}");
        sharded(d.path());
        let index = d.path().join(INDEX_FILE);
        let good = std::fs::read_to_string(&index).unwrap();
        for (from, to, want) in [
            (
                r#""c": "model-00002-of-00002.safetensors""#,
                r#""c": "../model-00002-of-00002.safetensors""#,
                "not a plain",
            ),
            (
                r#""c": "model-00002-of-00002.safetensors""#,
                r#""c": "/etc/passwd""#,
                "not a plain",
            ),
            (
                r#""c": "model-00002-of-00002.safetensors""#,
                r#""c": "model-00003-of-00002.safetensors""#,
                "model-00003-of-00002.safetensors",
            ),
            (
                r#""a": "model-00001-of-00002.safetensors""#,
                r#""a": "model-00002-of-00002.safetensors""#,
                "lacks it",
            ),
            ("weight_map", "weights", "weight_map"),
            (
                r#""b": "model-00001-of-00002.safetensors""#,
                r#""a": "model-00001-of-00002.safetensors""#,
                "listed twice",
            ),
        ] {
            std::fs::write(&index, good.replacen(from, to, 1)).unwrap();
            let e = FolderWeights::open(d.path()).unwrap_err().to_string();
            assert!(e.contains(want), "{to}: {e}");
        }
        std::fs::write(&index, r#"{"weight_map": {}}"#).unwrap();
        let e = FolderWeights::open(d.path()).unwrap_err().to_string();
        assert!(e.contains("empty"), "{e}");
    }
}
