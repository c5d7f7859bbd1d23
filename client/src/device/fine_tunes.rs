//! `FineTuneSet`: several fine-tunes of one base on one device. The base model is held once
//! (memory-mapped), N fine-tunes are held as their packed `.bitdelta` bytes (1 bit per quantized
//! weight, about 1/32 of f32), and fine-tune k's weights are materialised on request as candle
//! tensors.
//!
//! Resident deltas are bounded by a memory budget: when adding or reloading one would exceed it, the
//! least recently used deltas are dropped from memory and re-read from disk on their next use. A
//! re-read delta must have the BLAKE3 it had when it was added, so a file changed behind our back is an
//! error, not a silently different model.
//!
//! A fine-tune can also be a soup recipe from the store ([`FineTuneSet::add_soup`]): it is built once
//! from its component deltas into a `.bitdelta` and held like the others.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::Device;
use zdn_protocol::bitdelta::{BitDeltaFile, FormatError};
use zdn_protocol::Hash;

use zdn_node::store::ObjectStore;

use crate::delta::apply::check_base;
use crate::device::apply::{apply_delta, apply_delta_into, AppliedModel, CandleApplyError};
use crate::model::file::{ModelFile, ModelFileError};
use crate::soup::build::{build, load_recipe, BuildJob, SoupBuildError};

#[derive(Debug, thiserror::Error)]
pub enum FineTuneSetError {
    #[error(transparent)]
    Base(#[from] ModelFileError),
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid .bitdelta file: {cause}")]
    Format { path: PathBuf, cause: FormatError },
    #[error("{path} changed on disk since it was added (BLAKE3 {now}, was {then})")]
    Changed {
        path: PathBuf,
        then: Hash,
        now: Hash,
    },
    #[error("{path} is {len} bytes, more than the whole memory budget of {budget} bytes")]
    OverBudget {
        path: PathBuf,
        len: u64,
        budget: u64,
    },
    #[error("no fine-tune {0:?} in the set")]
    Unknown(String),
    #[error("a fine-tune named {0:?} is already in the set")]
    Duplicate(String),
    #[error(transparent)]
    Apply(#[from] CandleApplyError),
    #[error("building soup fine-tune {name:?}: {cause}")]
    Soup {
        name: String,
        cause: Box<SoupBuildError>,
    },
}

#[derive(Debug)]
struct FineTune {
    name: String,
    path: PathBuf,
    hash: Hash,
    len: u64,
    bytes: Option<Arc<Vec<u8>>>,
    last_used: u64,
}

/// Counters of what the set did (for tests and the switch benchmark).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct FineTuneSetStats {
    /// Deltas read from disk (first add and every reload after an eviction).
    pub loads: u64,
    pub evictions: u64,
    pub materialised: u64,
}

#[derive(Debug)]
pub struct FineTuneSet {
    base: ModelFile,
    base_path: PathBuf,
    device: Device,
    budget: u64,
    resident: u64,
    fine_tunes: Vec<FineTune>,
    tick: u64,
    force: bool,
    stats: FineTuneSetStats,
}

impl FineTuneSet {
    /// A set over the base at `base`; resident deltas are kept within `budget` bytes. With `force`,
    /// deltas made for another base are accepted.
    pub fn new(
        base: &Path,
        device: Device,
        budget: u64,
        force: bool,
    ) -> Result<Self, FineTuneSetError> {
        Ok(FineTuneSet {
            base: ModelFile::open(base)?,
            base_path: base.to_path_buf(),
            device,
            budget,
            resident: 0,
            fine_tunes: Vec::new(),
            tick: 0,
            force,
            stats: FineTuneSetStats::default(),
        })
    }

    /// Adds a fine-tune from a `.bitdelta` file: read, parsed, checked against the base, kept resident.
    pub fn add(&mut self, name: &str, delta: &Path) -> Result<(), FineTuneSetError> {
        if self.fine_tunes.iter().any(|p| p.name == name) {
            return Err(FineTuneSetError::Duplicate(name.to_owned()));
        }
        let bytes = self.read(delta)?;
        let f = BitDeltaFile::parse(&bytes).map_err(|cause| FineTuneSetError::Format {
            path: delta.to_path_buf(),
            cause,
        })?;
        check_base(&f, &self.base, self.force).map_err(CandleApplyError::from)?;
        let len = bytes.len() as u64;
        self.make_room(len, delta)?;
        self.tick += 1;
        self.resident += len;
        self.fine_tunes.push(FineTune {
            name: name.to_owned(),
            path: delta.to_path_buf(),
            hash: Hash::of(&bytes),
            len,
            bytes: Some(Arc::new(bytes)),
            last_used: self.tick,
        });
        Ok(())
    }

    /// Adds a soup fine-tune from recipe `soup` in `store`: the soup is built from its component
    /// deltas (read from the store, every hash verified) against this set's base into
    /// `dir/soup-<hash>.bitdelta` (the same bytes as `zdn soup mix -o`), then held like any other
    /// delta. Returns the built file's path.
    pub fn add_soup(
        &mut self,
        name: &str,
        store: &ObjectStore,
        soup: &Hash,
        dir: &Path,
    ) -> Result<PathBuf, FineTuneSetError> {
        if self.fine_tunes.iter().any(|p| p.name == name) {
            return Err(FineTuneSetError::Duplicate(name.to_owned()));
        }
        let soup_err = |cause| FineTuneSetError::Soup {
            name: name.to_owned(),
            cause: Box::new(cause),
        };
        let recipe = load_recipe(store, soup).map_err(soup_err)?;
        let path = dir.join(format!("soup-{}.bitdelta", soup.to_hex()));
        build(
            store,
            &recipe,
            &BuildJob {
                base_file: Some(self.base_path.clone()),
                output: path.clone(),
                model_name: name.to_owned(),
                verify_base: !self.force,
                progress: false,
            },
        )
        .map_err(soup_err)?;
        self.add(name, &path)?;
        Ok(path)
    }

    /// FineTune `name`'s weights, in the delta's tensor order, on the set's device: a new model
    /// (see [`Self::switch_into`] to reuse one).
    pub fn materialise(&mut self, name: &str) -> Result<AppliedModel, FineTuneSetError> {
        let (k, bytes) = self.delta_bytes(name)?;
        let f = self.parse(k, &bytes)?;
        let model = apply_delta(&self.base, &f, &self.device, self.force)?;
        self.stats.materialised += 1;
        Ok(model)
    }

    /// Makes `live` fine-tune `name`'s weights, re-applied tensor by tensor from the base over
    /// what `live` held (any fine-tune of the set, or an empty model): the set keeps one
    /// materialised model, and a switch needs one more tensor, not a second model. On error
    /// `live` is left empty.
    pub fn switch_into(
        &mut self,
        name: &str,
        live: &mut AppliedModel,
    ) -> Result<(), FineTuneSetError> {
        let switched = self.delta_bytes(name).and_then(|(k, bytes)| {
            let f = self.parse(k, &bytes)?;
            Ok(apply_delta_into(
                &self.base,
                &f,
                &self.device,
                self.force,
                live,
            )?)
        });
        if switched.is_err() {
            live.tensors.clear();
        }
        switched?;
        self.stats.materialised += 1;
        Ok(())
    }

    fn parse<'b>(&self, k: usize, bytes: &'b [u8]) -> Result<BitDeltaFile<'b>, FineTuneSetError> {
        BitDeltaFile::parse(bytes).map_err(|cause| FineTuneSetError::Format {
            path: self.fine_tunes[k].path.clone(),
            cause,
        })
    }

    /// The packed delta of fine-tune `name` (its index), read again from disk if it was evicted
    /// (and checked to be the file that was added).
    fn delta_bytes(&mut self, name: &str) -> Result<(usize, Arc<Vec<u8>>), FineTuneSetError> {
        let k = self
            .fine_tunes
            .iter()
            .position(|p| p.name == name)
            .ok_or_else(|| FineTuneSetError::Unknown(name.to_owned()))?;
        let bytes = match self.fine_tunes[k].bytes.clone() {
            Some(b) => b,
            None => {
                let (path, len, then) = {
                    let p = &self.fine_tunes[k];
                    (p.path.clone(), p.len, p.hash)
                };
                let b = self.read(&path)?;
                let now = Hash::of(&b);
                if now != then {
                    return Err(FineTuneSetError::Changed { path, then, now });
                }
                self.make_room(len, &path)?;
                self.resident += len;
                let b = Arc::new(b);
                self.fine_tunes[k].bytes = Some(b.clone());
                b
            }
        };
        self.tick += 1;
        self.fine_tunes[k].last_used = self.tick;
        Ok((k, bytes))
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.fine_tunes.iter().map(|p| p.name.as_str())
    }

    /// Bytes of deltas held in memory now.
    pub fn resident_bytes(&self) -> u64 {
        self.resident
    }

    pub fn is_resident(&self, name: &str) -> bool {
        self.fine_tunes
            .iter()
            .any(|p| p.name == name && p.bytes.is_some())
    }

    pub fn stats(&self) -> FineTuneSetStats {
        self.stats
    }

    fn read(&mut self, path: &Path) -> Result<Vec<u8>, FineTuneSetError> {
        let len = std::fs::metadata(path)
            .map_err(|source| FineTuneSetError::Read {
                path: path.to_path_buf(),
                source,
            })?
            .len();
        if len > self.budget {
            return Err(FineTuneSetError::OverBudget {
                path: path.to_path_buf(),
                len,
                budget: self.budget,
            });
        }
        let b = std::fs::read(path).map_err(|source| FineTuneSetError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        self.stats.loads += 1;
        Ok(b)
    }

    /// Evicts least recently used deltas until `len` more bytes fit in the budget.
    fn make_room(&mut self, len: u64, path: &Path) -> Result<(), FineTuneSetError> {
        if len > self.budget {
            return Err(FineTuneSetError::OverBudget {
                path: path.to_path_buf(),
                len,
                budget: self.budget,
            });
        }
        while self.resident + len > self.budget {
            let Some(victim) = self
                .fine_tunes
                .iter_mut()
                .filter(|p| p.bytes.is_some())
                .min_by_key(|p| p.last_used)
            else {
                break;
            };
            victim.bytes = None;
            self.resident -= victim.len;
            self.stats.evictions += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delta::apply::{apply, ApplyJob};
    use crate::device::apply::write_safetensors;
    use crate::soup::build::fixture::{deltas_of_one_base, soup_store};

    /// Three fine-tunes of one base (different seeds change only the fine-tune's deltas).
    fn three_fine_tunes(dir: &Path) -> (PathBuf, Vec<PathBuf>) {
        deltas_of_one_base(dir, 3)
    }

    #[test]
    fn lru_within_budget_and_same_bytes_as_apply() {
        let dir = tempfile::tempdir().unwrap();
        let (base, deltas) = three_fine_tunes(dir.path());
        let len = std::fs::metadata(&deltas[0]).unwrap().len();
        // Room for two deltas, not three.
        let mut set = FineTuneSet::new(&base, Device::Cpu, 2 * len + len / 2, false).unwrap();
        for (i, d) in deltas.iter().enumerate() {
            set.add(&format!("p{i}"), d).unwrap();
        }
        assert!(!set.is_resident("p0") && set.is_resident("p1") && set.is_resident("p2"));
        assert!(set.resident_bytes() <= 2 * len + len / 2);
        for name in ["p0", "p2", "p1", "p0"] {
            let i: usize = name[1..].parse().unwrap();
            let m = set.materialise(name).unwrap();
            let ours = dir.path().join("ours.st");
            write_safetensors(&m.tensors, &ours).unwrap();
            let cli = dir.path().join("cli.st");
            apply(&ApplyJob {
                base: base.clone(),
                delta: deltas[i].clone(),
                output: cli.clone(),
                force: false,
                progress: false,
            })
            .unwrap();
            assert_eq!(
                std::fs::read(&ours).unwrap(),
                std::fs::read(&cli).unwrap(),
                "{name}"
            );
        }
        // p0 reloaded (evicting p1, the least recently used), p2 used, p1 reloaded (evicting p0),
        // p0 reloaded again.
        let s = set.stats();
        assert_eq!(s.materialised, 4);
        assert_eq!(s.loads, 3 + 3);
        assert!(set.resident_bytes() <= 2 * len + len / 2);
    }

    /// One live model switched through the set's fine-tunes holds, after each switch, exactly what
    /// `materialise` gives (byte for byte), in the same tensor list (replaced in place, not
    /// rebuilt); a failed switch leaves it empty.
    #[test]
    fn switch_into_reuses_one_model() {
        let dir = tempfile::tempdir().unwrap();
        let (base, deltas) = three_fine_tunes(dir.path());
        let mut set = FineTuneSet::new(&base, Device::Cpu, 1 << 30, false).unwrap();
        for (i, d) in deltas.iter().enumerate() {
            set.add(&format!("p{i}"), d).unwrap();
        }
        let mut live = AppliedModel {
            tensors: Vec::new(),
            base: crate::delta::apply::BaseCheck {
                base_hash: Hash::ZERO,
                verified: false,
            },
        };
        let bytes = |m: &AppliedModel, path: &Path| {
            write_safetensors(&m.tensors, path).unwrap();
            std::fs::read(path).unwrap()
        };
        let (a, b) = (dir.path().join("a.st"), dir.path().join("b.st"));
        let mut list = None;
        for name in ["p0", "p2", "p1", "p0"] {
            set.switch_into(name, &mut live).unwrap();
            let fresh = set.materialise(name).unwrap();
            assert_eq!(bytes(&live, &a), bytes(&fresh, &b), "{name}");
            assert!(live.base.verified);
            let ptr = live.tensors.as_ptr();
            assert_eq!(
                *list.get_or_insert(ptr),
                ptr,
                "{name}: the tensor list was rebuilt"
            );
        }
        let e = set.switch_into("nope", &mut live).unwrap_err();
        assert!(matches!(e, FineTuneSetError::Unknown(_)), "{e}");
        assert!(live.tensors.is_empty());
    }

    /// A recipe of two fine_tunes' deltas, from a store, gives the same weights as `zdn delta apply`
    /// of the soup built by `zdn soup mix -o`.
    #[test]
    fn soup_fine_tune_from_a_recipe_in_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let f = soup_store(dir.path());
        let (store, base, deltas, soup, recipe) =
            (&f.store, &f.base_file, &f.delta_files, f.soup, &f.recipe);
        let h0 = f.deltas[0];
        let len = std::fs::metadata(&deltas[0]).unwrap().len();
        let mut set = FineTuneSet::new(base, Device::Cpu, 4 * len, false).unwrap();
        set.add("a", &deltas[0]).unwrap();
        let built = set.add_soup("mix", store, &soup, dir.path()).unwrap();
        assert!(set.is_resident("mix"));
        let m = set.materialise("mix").unwrap();
        let ours = dir.path().join("soup-ours.st");
        write_safetensors(&m.tensors, &ours).unwrap();

        // The same soup built the way `zdn soup mix -o` builds it, then applied by the CLI path.
        let reference = dir.path().join("reference.bitdelta");
        build(
            store,
            recipe,
            &BuildJob {
                base_file: None,
                output: reference.clone(),
                model_name: "mix".into(),
                verify_base: true,
                progress: false,
            },
        )
        .unwrap();
        assert_eq!(
            std::fs::read(&built).unwrap(),
            std::fs::read(&reference).unwrap()
        );
        let cli = dir.path().join("soup-cli.st");
        apply(&ApplyJob {
            base: base.clone(),
            delta: reference,
            output: cli.clone(),
            force: false,
            progress: false,
        })
        .unwrap();
        assert_eq!(std::fs::read(&ours).unwrap(), std::fs::read(&cli).unwrap());
        // The soup differs from both of its components.
        let a = set.materialise("a").unwrap();
        let a_path = dir.path().join("a.st");
        write_safetensors(&a.tensors, &a_path).unwrap();
        assert_ne!(
            std::fs::read(&a_path).unwrap(),
            std::fs::read(&ours).unwrap()
        );

        // A name twice, a delta that is not a soup, an unknown hash: clear errors.
        assert!(matches!(
            set.add_soup("mix", store, &soup, dir.path()),
            Err(FineTuneSetError::Duplicate(_))
        ));
        let e = set.add_soup("x", store, &h0, dir.path()).unwrap_err();
        assert!(e.to_string().contains("not a soup recipe"), "{e}");
        let e = set
            .add_soup("y", store, &Hash::of(b"nothing"), dir.path())
            .unwrap_err();
        assert!(e.to_string().contains("no object"), "{e}");
    }

    #[test]
    fn changed_file_and_bad_inputs_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (base, deltas) = three_fine_tunes(dir.path());
        let len = std::fs::metadata(&deltas[0]).unwrap().len();
        let mut set = FineTuneSet::new(&base, Device::Cpu, len + len / 2, false).unwrap();
        set.add("a", &deltas[0]).unwrap();
        assert!(matches!(
            set.add("a", &deltas[1]),
            Err(FineTuneSetError::Duplicate(_))
        ));
        set.add("b", &deltas[1]).unwrap(); // evicts a
        std::fs::copy(&deltas[2], &deltas[0]).unwrap();
        let e = set.materialise("a").unwrap_err();
        assert!(matches!(e, FineTuneSetError::Changed { .. }), "{e}");
        assert!(matches!(
            set.materialise("zzz"),
            Err(FineTuneSetError::Unknown(_))
        ));
        let mut tiny = FineTuneSet::new(&base, Device::Cpu, 10, false).unwrap();
        assert!(matches!(
            tiny.add("x", &deltas[1]),
            Err(FineTuneSetError::OverBudget { .. })
        ));
        let junk = dir.path().join("junk.bitdelta");
        std::fs::write(&junk, b"BITDELTA but not really").unwrap();
        assert!(matches!(
            set.add("j", &junk),
            Err(FineTuneSetError::Format { .. })
        ));
    }
}
