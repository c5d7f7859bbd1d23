//! Building a soup from its recipe and the store: the component deltas (and, unless a base file is
//! given, the base) are written out of the store — every chunk and object hash verified — into a
//! private temporary directory beside the output, then combined with the recipe's weights and
//! quantization ([`crate::soup_combine`]). The same recipe and components give the same bytes on
//! every machine.

use std::path::{Path, PathBuf};

use zdn_node::store::{ObjectStore, StoreError};
use zdn_protocol::bitdelta::{EncodeOptions, DEFAULT_ZSTD_LEVEL};
use zdn_protocol::manifest::Kind;
use zdn_protocol::soup::{Recipe, RecipeError};
use zdn_protocol::Hash;

use crate::soup_combine::{combine, CombineError, CombineInput, CombineJob, CombineReport};
use crate::soup_method::Method;

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
    #[error("soup {hash}: {cause}")]
    Recipe { hash: Hash, cause: RecipeError },
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
    let bytes = store
        .get_bytes(hash)
        .map_err(|cause| SoupBuildError::Read {
            hash: *hash,
            cause: Box::new(cause),
        })?;
    Recipe::decode(&bytes).map_err(|cause| SoupBuildError::Recipe { hash: *hash, cause })
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
    let tmp = tempfile::Builder::new()
        .prefix(".zdn-soup.")
        .tempdir_in(&dir)
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
