//! `adapter_config.json` of a PEFT LoRA adapter: what zdn reads from it, what it refuses, and why
//! (docs/spec/lora.md § 2).
//!
//! The file is parsed in full before anything else is done with the adapter; every field PEFT writes
//! is either used, recorded, known not to change the merged weights, or refused. An unknown field is
//! accepted only when its value is empty (`null`, `false`, `""`, `[]`, `{}`), so a feature added to
//! PEFT later is refused rather than silently ignored.

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use super::pattern::{ModulePattern, ModuleSelector, PatternError};

/// Largest `adapter_config.json` accepted, in bytes (checked before parsing).
pub const MAX_CONFIG_BYTES: usize = 1 << 20;
/// Largest LoRA rank accepted (in `r` and `rank_pattern`).
pub const MAX_RANK: u32 = 1 << 16;
/// Most entries accepted in each of `target_modules`, `exclude_modules`, `rank_pattern` and
/// `alpha_pattern`.
pub const MAX_PATTERNS: usize = 1 << 14;
/// Most keys of each of `rank_pattern` and `alpha_pattern` that are regular expressions (each is
/// compiled; a key that is a module name is not).
pub const MAX_REGEX_KEYS: usize = 64;
/// Longest module name, pattern or tensor name accepted, in bytes.
pub const MAX_NAME_LEN: usize = 1024;

/// A parsed, accepted LoRA adapter configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterConfig {
    /// `r`: the rank of every module without a `rank_pattern` entry.
    pub rank: u32,
    /// `lora_alpha`: α of every module without an `alpha_pattern` entry.
    pub alpha: f64,
    /// `use_rslora`: the scale is α/√r instead of α/r.
    pub use_rslora: bool,
    /// `fan_in_fan_out`: base weights are stored as `[in, out]` (GPT-2's `Conv1D`), so the update is
    /// transposed.
    pub fan_in_fan_out: bool,
    /// `target_modules`.
    pub target_modules: ModuleSelector,
    /// `exclude_modules`, when set.
    pub exclude_modules: Option<ModuleSelector>,
    /// `rank_pattern`: per-module ranks, keyed by PEFT suffix patterns.
    pub rank_pattern: Vec<(ModulePattern, u32)>,
    /// `alpha_pattern`: per-module α, keyed by PEFT suffix patterns.
    pub alpha_pattern: Vec<(ModulePattern, f64)>,
    /// `base_model_name_or_path`: recorded for reports, never used to find or check the base.
    pub base_model_name_or_path: Option<String>,
}

/// Why an `adapter_config.json` is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("adapter_config.json is {len} bytes; the limit is {MAX_CONFIG_BYTES}")]
    TooLarge { len: usize },
    #[error("adapter_config.json is not valid JSON: {0}")]
    Json(String),
    #[error("adapter_config.json is not a JSON object")]
    NotAnObject,
    #[error("adapter_config.json lacks {0:?}")]
    Missing(&'static str),
    #[error("adapter_config.json: {field:?} {problem}")]
    Invalid { field: String, problem: String },
    #[error("adapter_config.json: {field:?} = {value}: {reason}")]
    Refused {
        field: String,
        value: String,
        reason: String,
    },
    #[error(
        "adapter_config.json: unknown field {field:?} = {value}: zdn does not know whether it \
         changes the merged weights, so it refuses the adapter"
    )]
    Unknown { field: String, value: String },
    #[error("adapter_config.json: {field:?}: {source}")]
    Pattern {
        field: String,
        #[source]
        source: PatternError,
    },
    #[error(
        "module {module:?}: {field} entries {a:?} and {b:?} both match it with different values \
         (PEFT would take whichever comes first in the file; zdn refuses the ambiguity)"
    )]
    Ambiguous {
        module: String,
        field: &'static str,
        a: String,
        b: String,
    },
    #[error(
        "module {module:?}: scale {alpha}/{root}{rank} is not a finite f32",
        root = if *rslora { "√" } else { "" }
    )]
    Scale {
        module: String,
        alpha: String,
        rank: u32,
        rslora: bool,
    },
}

/// Fields PEFT writes that do not change the merged weights (training, loading or initialisation
/// settings whose effect, if any, is already in the saved A and B).
const IGNORED: &[&str] = &[
    "task_type",
    "auto_mapping",
    "revision",
    "inference_mode",
    "lora_dropout",
    "megatron_core",
    "loftq_config",
    "eva_config",
    "corda_config",
    "qalora_group_size",
    "runtime_config",
    "ensure_weight_tying",
    "peft_version",
    "layers_pattern",
];

impl AdapterConfig {
    /// Parses and checks `adapter_config.json` (its bytes).
    pub fn parse(json: &[u8]) -> Result<Self, ConfigError> {
        if json.len() > MAX_CONFIG_BYTES {
            return Err(ConfigError::TooLarge { len: json.len() });
        }
        let root = serde_json::from_slice::<StrictValue>(json)
            .map_err(|e| ConfigError::Json(e.to_string()))?
            .0;
        let Value::Object(fields) = root else {
            return Err(ConfigError::NotAnObject);
        };
        let get = |k: &str| fields.get(k).filter(|v| !v.is_null());

        let peft_type = get("peft_type").ok_or(ConfigError::Missing("peft_type"))?;
        if peft_type.as_str() != Some("LORA") {
            return Err(refused(
                "peft_type",
                peft_type,
                "zdn merges LoRA adapters only (peft_type \"LORA\")",
            ));
        }
        let rank = rank_value("r", get("r").ok_or(ConfigError::Missing("r"))?)?;
        let alpha = alpha_value(
            "lora_alpha",
            get("lora_alpha").ok_or(ConfigError::Missing("lora_alpha"))?,
        )?;
        let target_modules = selector(
            "target_modules",
            get("target_modules").ok_or(ConfigError::Missing("target_modules"))?,
        )?;
        let exclude_modules = get("exclude_modules")
            .map(|v| selector("exclude_modules", v))
            .transpose()?;
        let rank_pattern = pattern_map("rank_pattern", get("rank_pattern"), rank_value)?;
        let alpha_pattern = pattern_map("alpha_pattern", get("alpha_pattern"), alpha_value)?;
        let base_model_name_or_path = match get("base_model_name_or_path") {
            None => None,
            Some(Value::String(s)) if s.len() <= MAX_NAME_LEN => Some(s.clone()),
            Some(_) => {
                return Err(invalid(
                    "base_model_name_or_path",
                    format!("must be a string of at most {MAX_NAME_LEN} bytes"),
                ))
            }
        };

        for (field, value) in &fields {
            check_other_field(field, value)?;
        }

        Ok(AdapterConfig {
            rank,
            alpha,
            use_rslora: flag(get("use_rslora"), "use_rslora")?,
            fan_in_fan_out: flag(get("fan_in_fan_out"), "fan_in_fan_out")?,
            target_modules,
            exclude_modules,
            rank_pattern,
            alpha_pattern,
            base_model_name_or_path,
        })
    }

    /// Whether the module is one the adapter targets: `target_modules` selects it and
    /// `exclude_modules` does not.
    pub fn targets(&self, module: &str) -> bool {
        self.target_modules.matches(module)
            && !self
                .exclude_modules
                .as_ref()
                .is_some_and(|x| x.matches(module))
    }

    /// The module's rank: its `rank_pattern` entry, or `r`.
    pub fn rank_for(&self, module: &str) -> Result<u32, ConfigError> {
        Ok(pattern_lookup(&self.rank_pattern, module, "rank_pattern")?.unwrap_or(self.rank))
    }

    /// The module's α: its `alpha_pattern` entry, or `lora_alpha`.
    pub fn alpha_for(&self, module: &str) -> Result<f64, ConfigError> {
        Ok(pattern_lookup(&self.alpha_pattern, module, "alpha_pattern")?.unwrap_or(self.alpha))
    }

    /// The module's scale s (docs/spec/lora.md § 4): α/r, or α/√r with `use_rslora`, computed in f64
    /// (IEEE division and square root, each correctly rounded) and rounded once to f32 (nearest even);
    /// refused unless finite.
    pub fn scale_for(&self, module: &str) -> Result<f32, ConfigError> {
        let rank = self.rank_for(module)?;
        let alpha = self.alpha_for(module)?;
        scale(alpha, rank, self.use_rslora).ok_or_else(|| ConfigError::Scale {
            module: module.to_owned(),
            alpha: alpha.to_string(),
            rank,
            rslora: self.use_rslora,
        })
    }
}

/// s = f32(α / r), or f32(α / √r) with rslora; `None` when the result is not finite or `rank` is 0.
pub fn scale(alpha: f64, rank: u32, rslora: bool) -> Option<f32> {
    if rank == 0 {
        return None;
    }
    let r = f64::from(rank);
    let divisor = if rslora { r.sqrt() } else { r };
    #[allow(clippy::cast_possible_truncation)] // the one rounding to f32 the spec defines
    let s = (alpha / divisor) as f32;
    s.is_finite().then_some(s)
}

fn pattern_lookup<T: Copy + PartialEq + std::fmt::Debug>(
    entries: &[(ModulePattern, T)],
    module: &str,
    field: &'static str,
) -> Result<Option<T>, ConfigError> {
    let mut found: Option<&(ModulePattern, T)> = None;
    for entry in entries.iter().filter(|(p, _)| p.suffix_match(module)) {
        match found {
            Some(first) if first.1 != entry.1 => {
                return Err(ConfigError::Ambiguous {
                    module: module.to_owned(),
                    field,
                    a: first.0.as_str().to_owned(),
                    b: entry.0.as_str().to_owned(),
                })
            }
            Some(_) => {}
            None => found = Some(entry),
        }
    }
    Ok(found.map(|e| e.1))
}

/// Every field not read by [`AdapterConfig::parse`] directly: refused features, ignored settings and
/// unknown fields.
fn check_other_field(field: &str, value: &Value) -> Result<(), ConfigError> {
    let truthy = !is_empty(value);
    let refuse = |reason: &str| Err(refused(field, value, reason));
    match field {
        "peft_type" | "r" | "lora_alpha" | "target_modules" | "exclude_modules"
        | "rank_pattern" | "alpha_pattern" | "base_model_name_or_path" | "use_rslora"
        | "fan_in_fan_out" => Ok(()),
        "bias" => match value {
            Value::Null => Ok(()),
            Value::String(s) if s == "none" => Ok(()),
            _ => refuse(
                "only bias \"none\" is merged: trained biases are extra tensors zdn does not carry",
            ),
        },
        "use_dora" if truthy => refuse(
            "DoRA rescales every column by a learned magnitude; it is not the plain merge W + s·B·A",
        ),
        "lora_bias" if truthy => refuse("a LoRA bias on B is an extra tensor zdn does not merge"),
        "modules_to_save" if truthy => refuse(
            "modules_to_save replaces whole tensors of the base; zdn merges only A/B pairs and does \
             not carry replaced tensors",
        ),
        "layers_to_transform" if truthy => refuse(
            "layers_to_transform restricts targets by layer index, which zdn does not read; \
             without it every targeted module must have its pair",
        ),
        "layer_replication" if truthy => {
            refuse("layer replication changes the model's layer structure, not just its weights")
        }
        "trainable_token_indices" if truthy => {
            refuse("trainable token rows are extra tensors zdn does not merge")
        }
        "target_parameters" if truthy => {
            refuse("LoRA on bare parameters (target_parameters) is not merged by zdn")
        }
        "alora_invocation_tokens" if truthy => refuse(
            "an activated LoRA applies only after its invocation tokens; merging it into the \
             weights would apply it everywhere",
        ),
        "use_qalora" if truthy => refuse("QA-LoRA's pooled input is not the plain merge"),
        "megatron_config" if truthy => refuse("Megatron-parallel layers are not merged by zdn"),
        "arrow_config" if truthy => refuse("Arrow routing between adapters is not a plain merge"),
        "init_lora_weights" => check_init(value),
        "use_dora" | "lora_bias" | "modules_to_save" | "layers_to_transform"
        | "layer_replication" | "trainable_token_indices" | "target_parameters"
        | "alora_invocation_tokens" | "use_qalora" | "megatron_config" | "arrow_config" => Ok(()),
        f if IGNORED.contains(&f) => Ok(()),
        _ if !truthy => Ok(()),
        _ => Err(ConfigError::Unknown {
            field: field.to_owned(),
            value: shown(value),
        }),
    }
}

/// `init_lora_weights`: initialisations that leave the base weights alone are accepted; those that
/// rewrite the base (PiSSA, OLoRA, CorDA, LoftQ) are refused, since their A and B only make sense
/// against the rewritten base.
fn check_init(value: &Value) -> Result<(), ConfigError> {
    match value {
        Value::Null | Value::Bool(_) => Ok(()),
        Value::String(s) if s == "gaussian" || s == "eva" => Ok(()),
        Value::String(s)
            if ["pissa", "olora", "corda", "loftq"]
                .iter()
                .any(|p| s.starts_with(p)) =>
        {
            Err(refused(
                "init_lora_weights",
                value,
                "this initialisation rewrites the base weights, so A and B do not apply to the \
                 original base (convert the adapter to a plain LoRA first)",
            ))
        }
        _ => Err(refused(
            "init_lora_weights",
            value,
            "unknown initialisation; zdn cannot tell whether it changed the base weights",
        )),
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::Number(_) => false,
    }
}

fn flag(v: Option<&Value>, field: &str) -> Result<bool, ConfigError> {
    match v {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(invalid(field, "must be true or false")),
    }
}

fn rank_value(field: &str, v: &Value) -> Result<u32, ConfigError> {
    v.as_u64()
        .filter(|&r| (1..=u64::from(MAX_RANK)).contains(&r))
        .and_then(|r| u32::try_from(r).ok())
        .ok_or_else(|| {
            invalid(
                field,
                format!("must be an integer from 1 to {MAX_RANK}, not {}", shown(v)),
            )
        })
}

fn alpha_value(field: &str, v: &Value) -> Result<f64, ConfigError> {
    v.as_f64()
        .filter(|a| a.is_finite())
        .ok_or_else(|| invalid(field, format!("must be a finite number, not {}", shown(v))))
}

fn selector(field: &str, v: &Value) -> Result<ModuleSelector, ConfigError> {
    let pattern_err = |source| ConfigError::Pattern {
        field: field.to_owned(),
        source,
    };
    match v {
        Value::String(s) if s == "all-linear" => Err(refused(
            field,
            v,
            "\"all-linear\" names no modules; PEFT resolves it against the model's layer types, \
             which zdn does not see (PEFT writes the resolved list when it saves an adapter)",
        )),
        Value::String(s) => ModulePattern::new(s)
            .map(ModuleSelector::Pattern)
            .map_err(pattern_err),
        Value::Array(items) => {
            if items.is_empty() || items.len() > MAX_PATTERNS {
                return Err(invalid(
                    field,
                    format!("must list 1 to {MAX_PATTERNS} module names"),
                ));
            }
            let names = items
                .iter()
                .map(|item| match item {
                    Value::String(s) if !s.is_empty() && s.len() <= MAX_NAME_LEN => Ok(s.clone()),
                    _ => Err(invalid(
                        field,
                        format!(
                            "entries must be non-empty strings of at most {MAX_NAME_LEN} bytes, \
                             not {}",
                            shown(item)
                        ),
                    )),
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(ModuleSelector::Names(names))
        }
        _ => Err(invalid(field, "must be a list of module names or a string")),
    }
}

fn pattern_map<T>(
    field: &str,
    v: Option<&Value>,
    value_of: fn(&str, &Value) -> Result<T, ConfigError>,
) -> Result<Vec<(ModulePattern, T)>, ConfigError> {
    let Some(v) = v else {
        return Ok(Vec::new());
    };
    let Value::Object(map) = v else {
        return Err(invalid(field, "must be an object of module patterns"));
    };
    if map.len() > MAX_PATTERNS {
        return Err(invalid(
            field,
            format!("has {} entries; the limit is {MAX_PATTERNS}", map.len()),
        ));
    }
    let mut regexes = 0usize;
    map.iter()
        .map(|(k, v)| {
            let pattern = ModulePattern::new(k).map_err(|source| ConfigError::Pattern {
                field: field.to_owned(),
                source,
            })?;
            regexes += usize::from(pattern.is_regex());
            if regexes > MAX_REGEX_KEYS {
                return Err(invalid(
                    field,
                    format!(
                        "has more than {MAX_REGEX_KEYS} keys that are regular expressions \
                         (module names are not limited so)"
                    ),
                ));
            }
            Ok((pattern, value_of(&format!("{field}.{k}"), v)?))
        })
        .collect()
}

fn invalid(field: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.to_owned(),
        problem: problem.into(),
    }
}

fn refused(field: &str, value: &Value, reason: &str) -> ConfigError {
    ConfigError::Refused {
        field: field.to_owned(),
        value: shown(value),
        reason: reason.to_owned(),
    }
}

/// A value as JSON, cut to 120 characters for an error message.
fn shown(v: &Value) -> String {
    let s = v.to_string();
    match s.char_indices().nth(120) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s,
    }
}

/// A JSON value parsed with every object's keys unique at every depth: serde_json keeps the last of
/// two equal keys, and a config that says `"r"` twice is ambiguous, so it is refused.
struct StrictValue(Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }
    fn visit_i64<E>(self, n: i64) -> Result<Value, E> {
        Ok(Value::from(n))
    }
    fn visit_u64<E>(self, n: u64) -> Result<Value, E> {
        Ok(Value::from(n))
    }
    fn visit_f64<E>(self, n: f64) -> Result<Value, E> {
        Ok(Value::from(n))
    }
    fn visit_str<E>(self, s: &str) -> Result<Value, E> {
        Ok(Value::String(s.to_owned()))
    }
    fn visit_string<E>(self, s: String) -> Result<Value, E> {
        Ok(Value::String(s))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(StrictValue(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = serde_json::Map::new();
        while let Some((k, StrictValue(v))) = map.next_entry::<String, StrictValue>()? {
            if out.contains_key(&k) {
                return Err(serde::de::Error::custom(format!("duplicate key {k:?}")));
            }
            out.insert(k, v);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
