//! Building a soup from its recipe and the store: the component deltas (and, unless a base file is
//! given, the base) are written out of the store — every chunk and object hash verified — into a
//! private temporary directory beside the output, then combined with the recipe's weights and
//! quantization ([`crate::soup::combine`]). The same recipe and components give the same bytes on
//! every machine.

use std::path::{Path, PathBuf};

use zdn_node::store::{ObjectStore, StoreError};
use zdn_protocol::bitdelta::{EncodeOptions, DEFAULT_ZSTD_LEVEL};
use zdn_protocol::manifest::Kind;
use zdn_protocol::soup::Recipe;
use zdn_protocol::Hash;

use crate::fs::partial::Partial;
use crate::soup::combine::{combine, CombineError, CombineInput, CombineJob, CombineReport};
use crate::soup::method::Method;

#[derive(Debug, Clone)]
pub struct BuildJob {
    /// The base model file; `None`: the recipe's base is read from the store.
    pub base_file: Option<PathBuf>,
    pub output: PathBuf,
    pub model_name: String,
    /// Refuse a base file whose BLAKE3 differs from the one the components record.
    pub verify_base: bool,
    pub progress: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SoupBuildError {
    #[error(transparent)]
    Store(Box<StoreError>),
    #[error("{0} is a {1} object, not a soup recipe")]
    NotASoup(Hash, &'static str),
    #[error("cannot create a temporary directory in {dir}: {cause}")]
    TempDir { dir: PathBuf, cause: std::io::Error },
    #[error("cannot write {path}: {cause}")]
    Write {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("reading {hash} from the store: {cause}")]
    Read { hash: Hash, cause: Box<StoreError> },
    #[error(transparent)]
    Combine(Box<CombineError>),
}

impl From<StoreError> for SoupBuildError {
    fn from(e: StoreError) -> Self {
        SoupBuildError::Store(Box::new(e))
    }
}

impl From<CombineError> for SoupBuildError {
    fn from(e: CombineError) -> Self {
        SoupBuildError::Combine(Box::new(e))
    }
}

/// Reads the recipe of soup object `hash` from the store (verified).
pub fn load_recipe(store: &ObjectStore, hash: &Hash) -> Result<Recipe, SoupBuildError> {
    let m = store.require_manifest(hash)?;
    if m.manifest.kind != Kind::Soup {
        return Err(SoupBuildError::NotASoup(*hash, m.manifest.kind.as_str()));
    }
    store.recipe(&m).map_err(|cause| SoupBuildError::Read {
        hash: *hash,
        cause: Box::new(cause),
    })
}

/// The directory an output is written in (temporary files go beside it, on the same disk).
pub fn output_dir(output: &Path) -> PathBuf {
    match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}

fn materialize(store: &ObjectStore, hash: &Hash, path: &Path) -> Result<(), SoupBuildError> {
    let werr = |cause| SoupBuildError::Write {
        path: path.to_owned(),
        cause,
    };
    let f = std::fs::File::create(path).map_err(werr)?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
    store
        .read_object(hash, &mut w, &mut |_| {})
        .map_err(|cause| SoupBuildError::Read {
            hash: *hash,
            cause: Box::new(cause),
        })?;
    Ok(())
}

/// Builds the soup of `recipe` into `job.output` (a `.bitdelta`).
pub fn build(
    store: &ObjectStore,
    recipe: &Recipe,
    job: &BuildJob,
) -> Result<CombineReport, SoupBuildError> {
    let dir = output_dir(&job.output);
    let tmp = Partial::create(|| {
        tempfile::Builder::new()
            .prefix(".zdn-soup.")
            .tempdir_in(&dir)
    })
    .map_err(|cause| SoupBuildError::TempDir {
        dir: dir.clone(),
        cause,
    })?;
    let base = match &job.base_file {
        Some(p) => p.clone(),
        None => {
            let p = tmp.path().join("base.safetensors");
            materialize(store, &recipe.base(), &p)?;
            p
        }
    };
    let mut inputs = Vec::with_capacity(recipe.components().len());
    for c in recipe.components() {
        let path = tmp.path().join(format!("{}.bitdelta", c.delta));
        materialize(store, &c.delta, &path)?;
        inputs.push(CombineInput {
            path,
            label: c.delta.to_string(),
        });
    }
    let report = combine(&CombineJob {
        base,
        inputs,
        method: Method::Weighted(
            recipe
                .components()
                .iter()
                .map(|c| f64::from(c.weight))
                .collect(),
        ),
        options: EncodeOptions {
            spec: recipe.spec(),
            zstd_level: DEFAULT_ZSTD_LEVEL,
        },
        model_name: job.model_name.clone(),
        output: job.output.clone(),
        verify_base: job.verify_base,
        progress: job.progress,
    })?;
    Ok(report)
}

/// A store holding a synthetic base, two of its deltas and a soup of them (0.25/0.75), for tests.
#[cfg(test)]
pub(crate) mod fixture {
    use std::path::{Path, PathBuf};

    use zdn_node::store::{AddOptions, ObjectStore};
    use zdn_protocol::bitdelta::{EncodeOptions, Granularity, Selection};
    use zdn_protocol::manifest::{Kind, PublisherKey};
    use zdn_protocol::soup::{Component, Recipe};
    use zdn_protocol::{DType, Hash};

    use crate::delta::encode::{encode, EncodeJob};
    use crate::model::synthetic::{write_pair, SyntheticSpec};

    pub struct SoupStore {
        pub store: ObjectStore,
        pub base_file: PathBuf,
        pub delta_files: Vec<PathBuf>,
        pub base: Hash,
        pub deltas: Vec<Hash>,
        pub soup: Hash,
        pub recipe: Recipe,
    }

    /// `n` fine-tunes of one synthetic base (each seed moves the weights differently), encoded.
    pub fn deltas_of_one_base(dir: &Path, n: u64) -> (PathBuf, Vec<PathBuf>) {
        let base = dir.join("base.st");
        let mut deltas = Vec::new();
        for seed in 0..n {
            let spec = SyntheticSpec {
                dtype: DType::F32,
                layers: 2,
                hidden: 32,
                intermediate: 64,
                vocab: 50,
                delta_scale: 0.01 * (seed + 1) as f32,
                seed: 5,
            };
            let f = dir.join(format!("ft{seed}.st"));
            write_pair(&spec, &base, &f).unwrap();
            let d = dir.join(format!("ft{seed}.bitdelta"));
            encode(&EncodeJob {
                base: base.clone(),
                finetuned: f,
                output: d.clone(),
                options: EncodeOptions::default(),
                selection: Selection::default(),
                model_name: None,
                progress: false,
            })
            .unwrap();
            deltas.push(d);
        }
        (base, deltas)
    }

    pub fn soup_store(dir: &Path) -> SoupStore {
        let (base_file, delta_files) = deltas_of_one_base(dir, 3);
        let store = ObjectStore::in_memory();
        let key = PublisherKey::from_seed(&[7; 32]);
        let add = |path: &Path, kind: Kind, name: &str, base: Option<Hash>| {
            let mut o = AddOptions::new(kind, name);
            o.base = base;
            let bytes = std::fs::read(path).unwrap();
            store.add(&bytes, &o, &key).unwrap().0.hash()
        };
        let base = add(&base_file, Kind::Base, "base", None);
        let deltas = vec![
            add(&delta_files[0], Kind::Delta, "a", Some(base)),
            add(&delta_files[2], Kind::Delta, "c", Some(base)),
        ];
        let recipe = Recipe::new(
            base,
            1,
            Granularity::Row,
            vec![
                Component {
                    delta: deltas[0],
                    weight: 0.25,
                },
                Component {
                    delta: deltas[1],
                    weight: 0.75,
                },
            ],
        )
        .unwrap();
        let mut o = AddOptions::new(Kind::Soup, "mix");
        o.base = Some(base);
        let soup = store.add(&recipe.encode(), &o, &key).unwrap().0.hash();
        SoupStore {
            store,
            base_file,
            delta_files,
            base,
            deltas,
            soup,
            recipe,
        }
    }
}

#[cfg(test)]
mod tests {
    use zdn_node::bundle;
    use zdn_node::store::{Column, Problem, Write};

    use super::fixture::soup_store;

    #[test]
    fn the_store_follows_a_soups_components() {
        let dir = tempfile::tempdir().unwrap();
        let f = soup_store(dir.path());
        let m = f.store.require_manifest(&f.soup).unwrap();
        assert_eq!(f.store.recipe(&m).unwrap(), f.recipe);
        let mut want = vec![f.base];
        want.extend(&f.deltas);
        assert_eq!(f.store.dependencies(&m).unwrap(), want);
        // A delta is not a soup.
        let dm = f.store.require_manifest(&f.deltas[0]).unwrap();
        assert!(f.store.recipe(&dm).is_err());
        assert_eq!(f.store.dependencies(&dm).unwrap(), vec![f.base]);

        // Only the soup pinned: gc keeps its components and base.
        for h in [f.base, f.deltas[0], f.deltas[1]] {
            f.store.set_pin(&h, false).unwrap();
        }
        let g = f.store.gc().unwrap();
        assert_eq!(g.manifests_removed, 0);
        assert!(f.store.verify(None, &mut |_| {}).unwrap().is_clean());

        // A component gone from under the soup: verify says which; export refuses.
        f.store
            .backend()
            .write(
                vec![Write::delete(
                    Column::Manifests,
                    f.deltas[1].as_bytes().to_vec(),
                )],
                true,
            )
            .unwrap();
        let v = f.store.verify(None, &mut |_| {}).unwrap();
        assert_eq!(
            v.problems,
            vec![Problem::MissingComponent {
                object: f.soup,
                component: f.deltas[1],
            }]
        );
        let mut out = Vec::new();
        let e = bundle::export(&f.store, &[f.soup], true, &mut out).unwrap_err();
        assert!(e.to_string().contains(&f.deltas[1].to_string()), "{e}");
        // Without dependencies the recipe alone exports.
        let mut out = Vec::new();
        bundle::export(&f.store, &[f.soup], false, &mut out).unwrap();
    }
}
