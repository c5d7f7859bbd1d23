//! Soup recipes: the object of a manifest of kind `soup` (docs/spec/recipe.md).
//!
//! A recipe names component deltas by manifest hash, one f32 weight each, the manifest hash of the
//! base they all apply to, and the quantization of the soup's single re-quantized delta. It is a few
//! hundred bytes: a node that already holds the components builds the soup itself, so a new mix costs
//! nothing on a slow link. The encoding is canonical (components in ascending hash order, no
//! duplicates, one valid encoding per recipe), so `decode(b)` succeeding implies `encode() == b`:
//!
//! ```text
//! "ZDNS" | version u8 = 1 | bits u8 (1|2|4) | granularity u8 (0 tensor, 1 row, 2 group) | group u32
//! | base 32 | n u16 (1..=1024) | n × ( component 32 | weight f32 )
//! ```
//! All integers and floats little-endian; weights finite (any sign, not necessarily summing to 1);
//! the (granularity, group) pair as in the `.bitdelta` format (group 0 unless code 2, then > 0).

use crate::bitdelta::{Granularity, QuantSpec};
use crate::hash::Hash;

pub const RECIPE_MAGIC: &[u8; 4] = b"ZDNS";
pub const RECIPE_VERSION: u8 = 1;
/// Most components a recipe may name.
pub const MAX_COMPONENTS: usize = 1024;
/// Bytes before the first component.
pub const RECIPE_HEADER_LEN: usize = 4 + 1 + 1 + 1 + 4 + 32 + 2;
/// Bytes per component: manifest hash and weight.
pub const COMPONENT_LEN: usize = 32 + 4;
/// Largest valid recipe.
pub const MAX_RECIPE_LEN: usize = RECIPE_HEADER_LEN + MAX_COMPONENTS * COMPONENT_LEN;

/// Why a recipe is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RecipeError {
    #[error("soup recipe is {0} bytes, over the {MAX_RECIPE_LEN}-byte limit")]
    TooLarge(usize),
    #[error("soup recipe is truncated: {0} cut off")]
    Truncated(&'static str),
    #[error("not a soup recipe (bad magic)")]
    Magic,
    #[error("soup recipe version {0} is not supported (this build reads version 1)")]
    Version(u8),
    #[error("a soup needs at least one component delta, the recipe names none")]
    Empty,
    #[error("a soup recipe names at most {MAX_COMPONENTS} components, this one {0}")]
    TooMany(usize),
    #[error("component {component}: weight {weight} is not finite")]
    NonFiniteWeight { component: Hash, weight: f32 },
    #[error("component {0} is named twice")]
    Duplicate(Hash),
    #[error("component #{0} is out of ascending hash order (the encoding is canonical)")]
    Unsorted(usize),
    #[error("the base {0} is also named as a component")]
    BaseIsComponent(Hash),
    #[error("bits must be 1, 2 or 4, got {0}")]
    Bits(u32),
    #[error("scale granularity code {code} with group size {group} is not valid")]
    Granularity { code: u8, group: u32 },
    #[error("{0} trailing bytes after the last component")]
    Trailing(usize),
}

/// One component of a soup: a delta (by manifest hash) and its weight.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Component {
    pub delta: Hash,
    pub weight: f32,
}

/// A validated soup recipe. Components are kept in ascending hash order.
#[derive(Debug, Clone, PartialEq)]
pub struct Recipe {
    base: Hash,
    bits: u32,
    granularity: Granularity,
    components: Vec<Component>,
}

fn granularity_code(g: Granularity) -> (u8, u32) {
    match g {
        Granularity::Tensor => (0, 0),
        Granularity::Row => (1, 0),
        Granularity::Group(n) => (2, n),
    }
}

fn granularity_from(code: u8, group: u32) -> Result<Granularity, RecipeError> {
    match (code, group) {
        (0, 0) => Ok(Granularity::Tensor),
        (1, 0) => Ok(Granularity::Row),
        (2, n) if n > 0 => Ok(Granularity::Group(n)),
        _ => Err(RecipeError::Granularity { code, group }),
    }
}

impl Recipe {
    /// A recipe over `components` (any order: they are sorted by hash) applied to `base`, whose soup
    /// is re-quantized with `bits` and `granularity`. Refuses an empty or oversized list, non-finite
    /// weights, a component named twice or equal to the base, and invalid quantization settings.
    pub fn new(
        base: Hash,
        bits: u32,
        granularity: Granularity,
        mut components: Vec<Component>,
    ) -> Result<Self, RecipeError> {
        components.sort_by_key(|c| c.delta);
        let r = Recipe {
            base,
            bits,
            granularity,
            components,
        };
        r.validate()?;
        Ok(r)
    }

    /// Every rule of the format that is not about bytes.
    fn validate(&self) -> Result<(), RecipeError> {
        if !matches!(self.bits, 1 | 2 | 4) {
            return Err(RecipeError::Bits(self.bits));
        }
        let (code, group) = granularity_code(self.granularity);
        granularity_from(code, group)?;
        if self.components.is_empty() {
            return Err(RecipeError::Empty);
        }
        if self.components.len() > MAX_COMPONENTS {
            return Err(RecipeError::TooMany(self.components.len()));
        }
        for (i, c) in self.components.iter().enumerate() {
            if !c.weight.is_finite() {
                return Err(RecipeError::NonFiniteWeight {
                    component: c.delta,
                    weight: c.weight,
                });
            }
            if c.delta == self.base {
                return Err(RecipeError::BaseIsComponent(c.delta));
            }
            if let Some(prev) = i.checked_sub(1).and_then(|p| self.components.get(p)) {
                match prev.delta.cmp(&c.delta) {
                    std::cmp::Ordering::Less => {}
                    std::cmp::Ordering::Equal => return Err(RecipeError::Duplicate(c.delta)),
                    std::cmp::Ordering::Greater => return Err(RecipeError::Unsorted(i)),
                }
            }
        }
        Ok(())
    }

    /// Manifest hash of the base every component applies to.
    pub fn base(&self) -> Hash {
        self.base
    }

    /// Components in ascending hash order.
    pub fn components(&self) -> &[Component] {
        &self.components
    }

    pub fn bits(&self) -> u32 {
        self.bits
    }

    pub fn granularity(&self) -> Granularity {
        self.granularity
    }

    /// The quantizer settings of the soup's re-quantized delta (no clipping).
    pub fn spec(&self) -> QuantSpec {
        QuantSpec {
            bits: self.bits,
            granularity: self.granularity,
            clip_sigma: None,
        }
    }

    /// The canonical bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        out.extend_from_slice(RECIPE_MAGIC);
        out.push(RECIPE_VERSION);
        // `validate` holds for every Recipe: bits ≤ 4, count ≤ MAX_COMPONENTS < u16::MAX.
        out.push(self.bits as u8);
        let (code, group) = granularity_code(self.granularity);
        out.push(code);
        out.extend_from_slice(&group.to_le_bytes());
        out.extend_from_slice(self.base.as_bytes());
        out.extend_from_slice(&(self.components.len() as u16).to_le_bytes());
        for c in &self.components {
            out.extend_from_slice(c.delta.as_bytes());
            out.extend_from_slice(&c.weight.to_le_bytes());
        }
        out
    }

    /// Length of [`Recipe::encode`]'s output.
    pub fn encoded_len(&self) -> usize {
        RECIPE_HEADER_LEN + self.components.len() * COMPONENT_LEN
    }

    /// Decodes and checks a recipe. Never panics; refuses anything but the canonical encoding.
    pub fn decode(bytes: &[u8]) -> Result<Self, RecipeError> {
        if bytes.len() > MAX_RECIPE_LEN {
            return Err(RecipeError::TooLarge(bytes.len()));
        }
        let magic = bytes.get(..4).ok_or(RecipeError::Truncated("magic"))?;
        if magic != RECIPE_MAGIC {
            return Err(RecipeError::Magic);
        }
        let header = bytes
            .get(..RECIPE_HEADER_LEN)
            .ok_or(RecipeError::Truncated("header"))?;
        let version = header[4];
        if version != RECIPE_VERSION {
            return Err(RecipeError::Version(version));
        }
        let bits = u32::from(header[5]);
        let group = u32::from_le_bytes([header[7], header[8], header[9], header[10]]);
        let granularity = granularity_from(header[6], group)?;
        let mut base = [0u8; 32];
        base.copy_from_slice(&header[11..43]);
        let n = usize::from(u16::from_le_bytes([header[43], header[44]]));
        if n > MAX_COMPONENTS {
            return Err(RecipeError::TooMany(n));
        }
        let body = &bytes[RECIPE_HEADER_LEN..];
        let need = n * COMPONENT_LEN; // ≤ MAX_COMPONENTS · 36: no overflow.
        if body.len() < need {
            return Err(RecipeError::Truncated("component list"));
        }
        if body.len() > need {
            return Err(RecipeError::Trailing(body.len() - need));
        }
        let components = body
            .chunks_exact(COMPONENT_LEN)
            .map(|c| {
                let mut h = [0u8; 32];
                h.copy_from_slice(&c[..32]);
                Component {
                    delta: Hash::from_bytes(h),
                    weight: f32::from_le_bytes([c[32], c[33], c[34], c[35]]),
                }
            })
            .collect();
        let r = Recipe {
            base: Hash::from_bytes(base),
            bits,
            granularity,
            components,
        };
        r.validate()?;
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn h(b: u8) -> Hash {
        Hash::from_bytes([b; 32])
    }

    fn c(b: u8, weight: f32) -> Component {
        Component {
            delta: h(b),
            weight,
        }
    }

    fn hex(v: &[u8]) -> String {
        v.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Golden vector: pins the byte layout. If this changes, every soup manifest hash changes: bump
    /// the version instead.
    #[test]
    fn golden_bytes() {
        let r = Recipe::new(
            h(0xbb),
            1,
            Granularity::Row,
            vec![c(0x22, -1.0), c(0x11, 0.5)],
        )
        .unwrap();
        let b = r.encode();
        assert_eq!(b.len(), 117);
        let want = format!(
            "5a444e53{}{}{}{}{}{}{}{}",
            "01",                         // version
            "01",                         // bits
            "01",                         // granularity: row
            "00000000",                   // group
            "bb".repeat(32),              // base
            "0200",                       // count
            "11".repeat(32) + "0000003f", // 0.5
            "22".repeat(32) + "000080bf", // -1.0
        );
        assert_eq!(hex(&b), want);
        assert_eq!(Recipe::decode(&b).unwrap(), r);
        let g = Recipe::new(h(1), 4, Granularity::Group(64), vec![c(2, 1.0)]).unwrap();
        assert_eq!(
            hex(&g.encode()[..11]),
            format!("5a444e53{}{}{}{}", "01", "04", "02", "40000000")
        );
    }

    #[test]
    fn rules_are_enforced() {
        let new = |bits, g, comps| Recipe::new(h(0xbb), bits, g, comps);
        assert_eq!(new(1, Granularity::Row, vec![]), Err(RecipeError::Empty));
        assert_eq!(
            new(1, Granularity::Row, vec![c(1, 0.5), c(1, 0.5)]),
            Err(RecipeError::Duplicate(h(1)))
        );
        for w in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            assert!(matches!(
                new(1, Granularity::Row, vec![c(1, w)]),
                Err(RecipeError::NonFiniteWeight { .. })
            ));
        }
        assert_eq!(
            new(3, Granularity::Row, vec![c(1, 1.0)]),
            Err(RecipeError::Bits(3))
        );
        assert_eq!(
            new(1, Granularity::Group(0), vec![c(1, 1.0)]),
            Err(RecipeError::Granularity { code: 2, group: 0 })
        );
        assert_eq!(
            new(1, Granularity::Row, vec![c(0xbb, 1.0)]),
            Err(RecipeError::BaseIsComponent(h(0xbb)))
        );
        let many = (0..=MAX_COMPONENTS)
            .map(|i| Component {
                delta: Hash::of(&i.to_le_bytes()),
                weight: 1.0,
            })
            .collect();
        assert_eq!(
            new(1, Granularity::Row, many),
            Err(RecipeError::TooMany(MAX_COMPONENTS + 1))
        );
        // Order of the input does not matter: the recipe is the same.
        assert_eq!(
            new(1, Granularity::Row, vec![c(2, 0.4), c(1, 0.6)]),
            new(1, Granularity::Row, vec![c(1, 0.6), c(2, 0.4)])
        );
    }

    #[test]
    fn bad_bytes_give_named_errors() {
        let good = Recipe::new(h(9), 1, Granularity::Row, vec![c(1, 0.6), c(2, 0.4)])
            .unwrap()
            .encode();
        let mut b = good.clone();
        b[0] = b'X';
        assert_eq!(Recipe::decode(&b), Err(RecipeError::Magic));
        let mut b = good.clone();
        b[4] = 2;
        assert_eq!(Recipe::decode(&b), Err(RecipeError::Version(2)));
        let mut b = good.clone();
        b.push(0);
        assert_eq!(Recipe::decode(&b), Err(RecipeError::Trailing(1)));
        assert_eq!(
            Recipe::decode(&good[..good.len() - 1]),
            Err(RecipeError::Truncated("component list"))
        );
        assert_eq!(
            Recipe::decode(&good[..3]),
            Err(RecipeError::Truncated("magic"))
        );
        assert_eq!(
            Recipe::decode(&good[..20]),
            Err(RecipeError::Truncated("header"))
        );
        // Zero components.
        let mut b = good[..RECIPE_HEADER_LEN].to_vec();
        b[43] = 0;
        assert_eq!(Recipe::decode(&b), Err(RecipeError::Empty));
        // Components swapped: not canonical.
        let mut b = good[..RECIPE_HEADER_LEN].to_vec();
        b.extend_from_slice(&good[RECIPE_HEADER_LEN + COMPONENT_LEN..]);
        b.extend_from_slice(&good[RECIPE_HEADER_LEN..RECIPE_HEADER_LEN + COMPONENT_LEN]);
        assert_eq!(Recipe::decode(&b), Err(RecipeError::Unsorted(1)));
        // The same component twice.
        let mut b = good[..RECIPE_HEADER_LEN + COMPONENT_LEN].to_vec();
        b.extend_from_slice(&good[RECIPE_HEADER_LEN..RECIPE_HEADER_LEN + COMPONENT_LEN]);
        assert_eq!(Recipe::decode(&b), Err(RecipeError::Duplicate(h(1))));
        // A NaN weight.
        let mut b = good.clone();
        let w = RECIPE_HEADER_LEN + 32;
        b[w..w + 4].copy_from_slice(&f32::NAN.to_le_bytes());
        assert!(matches!(
            Recipe::decode(&b),
            Err(RecipeError::NonFiniteWeight { .. })
        ));
        // A forged count larger than the cap, and one larger than the bytes.
        let mut b = good.clone();
        b[43..45].copy_from_slice(&u16::MAX.to_le_bytes());
        assert_eq!(Recipe::decode(&b), Err(RecipeError::TooMany(65535)));
        let mut b = good.clone();
        b[43..45].copy_from_slice(&3u16.to_le_bytes());
        assert_eq!(
            Recipe::decode(&b),
            Err(RecipeError::Truncated("component list"))
        );
        assert_eq!(
            Recipe::decode(&vec![0u8; MAX_RECIPE_LEN + 1]),
            Err(RecipeError::TooLarge(MAX_RECIPE_LEN + 1))
        );
    }

    fn arb_recipe() -> impl Strategy<Value = Recipe> {
        (
            any::<[u8; 32]>(),
            prop::sample::select(vec![1u32, 2, 4]),
            prop_oneof![
                Just(Granularity::Tensor),
                Just(Granularity::Row),
                (1u32..10_000).prop_map(Granularity::Group)
            ],
            prop::collection::btree_map(any::<[u8; 32]>(), -1e6f32..1e6, 1..40),
        )
            .prop_filter_map("base named as a component", |(base, bits, g, comps)| {
                let comps = comps
                    .into_iter()
                    .map(|(d, weight)| Component {
                        delta: Hash::from_bytes(d),
                        weight,
                    })
                    .collect();
                Recipe::new(Hash::from_bytes(base), bits, g, comps).ok()
            })
    }

    proptest! {
        #[test]
        fn encode_decode_round_trip(r in arb_recipe()) {
            let b = r.encode();
            prop_assert_eq!(b.len(), r.encoded_len());
            let d = Recipe::decode(&b).unwrap();
            prop_assert_eq!(d.encode(), b);
            prop_assert_eq!(d, r);
        }

        #[test]
        fn mutated_recipes_never_panic(r in arb_recipe(), i in any::<usize>(), v in any::<u8>(),
                                       cut in any::<usize>()) {
            let mut b = r.encode();
            let i = i % b.len();
            b[i] = v;
            if let Ok(d) = Recipe::decode(&b) {
                // Whatever decodes re-encodes to the same bytes (one encoding per recipe).
                prop_assert_eq!(d.encode(), b.clone());
            }
            let _ = Recipe::decode(&b[..cut % (b.len() + 1)]);
        }
    }
}
