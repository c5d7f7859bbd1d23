//! What an object needs besides its own chunks: a delta or a soup needs its base; a soup also needs
//! its component deltas. The components are named inside the recipe, not in the manifest, so the
//! recipe is read from the store, with every chunk and the object hash verified. `gc` keeps these
//! objects, `export` carries them, `import` and `verify` check they are there, and `fetch`
//! follows them.

use zdn_protocol::manifest::{Kind, SignedManifest};
use zdn_protocol::object::ObjectError;
use zdn_protocol::soup::recipe::MAX_RECIPE_LEN;
use zdn_protocol::soup::{Recipe, RecipeError};
use zdn_protocol::Hash;

use super::{ObjectStore, StoreError};

impl ObjectStore {
    /// The recipe of soup manifest `m`. The recipe's chunks must be in the store; the manifest
    /// itself need not be committed yet (bundle import checks a soup before committing it).
    pub fn recipe(&self, m: &SignedManifest) -> Result<Recipe, StoreError> {
        let object = m.hash();
        if m.manifest.kind != Kind::Soup {
            return Err(StoreError::NotASoup(object, m.manifest.kind.as_str()));
        }
        // Cap before reading: a recipe is at most MAX_RECIPE_LEN bytes.
        let len = match usize::try_from(m.manifest.object_len) {
            Ok(l) if l <= MAX_RECIPE_LEN => l,
            Ok(l) => return Err(ObjectError::from(RecipeError::TooLarge(l)).into()),
            Err(_) => return Err(ObjectError::from(RecipeError::TooLarge(usize::MAX)).into()),
        };
        let mut bytes = Vec::with_capacity(len);
        for r in &m.manifest.chunks {
            bytes.extend_from_slice(&self.read_chunk(&object, r)?);
            if bytes.len() > len {
                return Err(StoreError::Corrupt {
                    key: format!("object {object}"),
                    problem: format!("chunks hold more than the manifest's {len} bytes"),
                });
            }
        }
        let actual = Hash::of(&bytes);
        if actual != m.manifest.object_hash {
            return Err(StoreError::ObjectHash {
                hash: object,
                expected: m.manifest.object_hash,
                actual,
            });
        }
        let recipe = Recipe::decode(&bytes).map_err(ObjectError::from)?;
        if m.manifest.base != Some(recipe.base()) {
            return Err(StoreError::SoupBase {
                recorded: recipe.base(),
                given: m.manifest.base,
            });
        }
        Ok(recipe)
    }

    /// The objects `m` needs, each once: its base (if any), then a soup's components in recipe
    /// order.
    pub fn dependencies(&self, m: &SignedManifest) -> Result<Vec<Hash>, StoreError> {
        let mut deps: Vec<Hash> = m.manifest.base.into_iter().collect();
        if m.manifest.kind == Kind::Soup {
            for c in self.recipe(m)?.components() {
                if !deps.contains(&c.delta) {
                    deps.push(c.delta);
                }
            }
        }
        Ok(deps)
    }
}
