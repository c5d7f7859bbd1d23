//! `*.safetensors.index.json`: the table Hugging Face writes beside sharded weights,
//! `{"metadata": {…}, "weight_map": {tensor name: shard file name, …}}`. A folder that has one must
//! agree with it: every shard it names is in the folder, every tensor it names is in the shard it
//! names, and every tensor of a shard it names is listed.

use std::collections::{HashMap, HashSet};

use super::MAX_SHARD_INDEX_LEN;

/// Whether a member path is a shard index.
pub fn is_shard_index(path: &str) -> bool {
    path.ends_with(".safetensors.index.json")
}

/// The `weight_map` of a shard index: (tensor name, shard file name) in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardIndex {
    pub weight_map: Vec<(String, String)>,
}

/// A JSON object read in order, refusing a key that appears twice (serde_json would keep the last).
struct Pairs(Vec<(String, String)>);

impl<'de> serde::Deserialize<'de> for Pairs {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Pairs;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object of tensor name → shard file name")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Pairs, A::Error> {
                let mut out = Vec::new();
                let mut seen = HashSet::new();
                while let Some((k, v)) = map.next_entry::<String, String>()? {
                    if !seen.insert(k.clone()) {
                        return Err(serde::de::Error::custom(format!(
                            "tensor {k:?} is listed twice"
                        )));
                    }
                    out.push((k, v));
                }
                Ok(Pairs(out))
            }
        }
        d.deserialize_map(V)
    }
}

#[derive(serde::Deserialize)]
struct File {
    weight_map: Option<Pairs>,
}

impl ShardIndex {
    /// Parses an index file; the error says what is wrong.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() > MAX_SHARD_INDEX_LEN {
            return Err(format!(
                "{} bytes, over the {MAX_SHARD_INDEX_LEN}-byte limit of a shard index",
                bytes.len()
            ));
        }
        let f: File =
            serde_json::from_slice(bytes).map_err(|e| format!("not a valid index: {e}"))?;
        let weight_map = f
            .weight_map
            .ok_or_else(|| "not a valid index: no \"weight_map\"".to_string())?
            .0;
        Ok(ShardIndex { weight_map })
    }
}

/// Checks index member `index_path` against the folder. `shards` maps each `*.safetensors` member's
/// path to its tensor names; `members` holds every member path.
pub fn check(
    index_path: &str,
    index: &ShardIndex,
    shards: &HashMap<&str, HashSet<&str>>,
    members: &HashSet<&str>,
) -> Result<(), String> {
    let dir = index_path.rfind('/').map_or("", |i| &index_path[..=i]);
    // Shard path → how many tensors the index puts in it.
    let mut listed: HashMap<String, usize> = HashMap::new();
    for (tensor, shard) in &index.weight_map {
        let path = format!("{dir}{shard}");
        super::check_path(&path)
            .map_err(|e| format!("names shard {shard:?}, which is not a valid path: {e}"))?;
        let Some(names) = shards.get(path.as_str()) else {
            return Err(if members.contains(path.as_str()) {
                format!("names shard {path:?}, which is not a .safetensors file")
            } else {
                format!("names shard {path:?}, which is not in the folder")
            });
        };
        if !names.contains(tensor.as_str()) {
            return Err(format!(
                "puts tensor {tensor:?} in {path:?}, which does not hold it"
            ));
        }
        *listed.entry(path).or_default() += 1;
    }
    for (path, n) in &listed {
        let names = &shards[path.as_str()];
        if *n != names.len() {
            // Every listed tensor is in the shard and listed once, so some tensor is not listed.
            let mut unlisted: Vec<&&str> = names
                .iter()
                .filter(|t| {
                    !index
                        .weight_map
                        .iter()
                        .any(|(n, s)| n == **t && format!("{dir}{s}") == *path)
                })
                .collect();
            unlisted.sort();
            return Err(format!(
                "does not list tensor {:?} of shard {path:?}",
                unlisted.first().map_or("?", |t| **t)
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder() -> (
        HashMap<&'static str, HashSet<&'static str>>,
        HashSet<&'static str>,
    ) {
        let mut shards = HashMap::new();
        shards.insert("m-1.safetensors", HashSet::from(["a", "b"]));
        shards.insert("m-2.safetensors", HashSet::from(["c"]));
        shards.insert("sub/x.safetensors", HashSet::from(["d"]));
        let members = HashSet::from([
            "m-1.safetensors",
            "m-2.safetensors",
            "sub/x.safetensors",
            "config.json",
        ]);
        (shards, members)
    }

    fn run(index_path: &str, json: &str) -> Result<(), String> {
        let (shards, members) = folder();
        let idx = ShardIndex::parse(json.as_bytes())?;
        check(index_path, &idx, &shards, &members)
    }

    #[test]
    fn a_matching_index_passes() {
        let ok = r#"{"metadata":{"total_size":1},"weight_map":{"a":"m-1.safetensors","b":"m-1.safetensors","c":"m-2.safetensors"}}"#;
        assert_eq!(run("model.safetensors.index.json", ok), Ok(()));
        assert_eq!(
            run(
                "sub/model.safetensors.index.json",
                r#"{"weight_map":{"d":"x.safetensors"}}"#
            ),
            Ok(())
        );
    }

    #[test]
    fn a_wrong_index_is_named() {
        let e = |json: &str| run("model.safetensors.index.json", json).unwrap_err();
        assert!(e(r#"{"weight_map":{"a":"m-3.safetensors"}}"#).contains("not in the folder"));
        assert!(e(r#"{"weight_map":{"a":"config.json"}}"#).contains("not a .safetensors"));
        assert!(e(r#"{"weight_map":{"z":"m-2.safetensors"}}"#).contains("does not hold it"));
        assert!(
            e(r#"{"weight_map":{"a":"m-1.safetensors"}}"#).contains("does not list tensor \"b\"")
        );
        assert!(e(r#"{"weight_map":{"a":"../m-1.safetensors"}}"#).contains("not a valid path"));
        assert!(
            e(r#"{"weight_map":{"a":"m-1.safetensors","a":"m-1.safetensors"}}"#)
                .contains("listed twice")
        );
        assert!(e(r#"{"metadata":{}}"#).contains("no \"weight_map\""));
        assert!(e(r#"{"weight_map":{"a":1}}"#).contains("not a valid index"));
        assert!(e("[").contains("not a valid index"));
        assert!(is_shard_index("model.safetensors.index.json"));
        assert!(!is_shard_index("model.safetensors"));
    }
}
