//! Functions as kept in the store (versions, the deployed one, declared
//! settings and limits) and how a source or a destination that runs one is
//! put together. Used at start-up (from the configuration file) and by the
//! management API (create, deploy) alike, so both build the same thing.

use crate::source_functions::SourceFunction;
use crate::{DestinationConfig, DestinationSpec, FunctionTransport, SinkSettings};
use functions::{FunctionCode, Limits, Pool};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;
use store::Store;

/// A setting a function declares.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingDecl {
    pub name: String,
    /// `string`, `boolean`, `number`, `array` or `map`.
    #[serde(rename = "type", default = "string_type")]
    pub kind: String,
    #[serde(default)]
    pub required: bool,
    /// Never returned by the API; redacted from logs and errors.
    #[serde(default)]
    pub encrypted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

fn string_type() -> String {
    "string".into()
}

impl SettingDecl {
    /// Checks a value against the declared type.
    pub fn check(&self, value: &Value) -> Result<(), String> {
        let ok = match self.kind.as_str() {
            "string" => value.is_string(),
            "boolean" => value.is_boolean(),
            "number" => value.is_number(),
            "array" => value.is_array(),
            "map" => value.is_object(),
            other => {
                return Err(format!(
                    "setting {:?}: unknown type {other:?} (string, boolean, number, array, map)",
                    self.name
                ))
            }
        };
        if ok {
            Ok(())
        } else {
            Err(format!("setting {:?} must be a {}", self.name, self.kind))
        }
    }
}

/// What a function declares besides its code.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionSpec {
    #[serde(default)]
    pub settings: Vec<SettingDecl>,
    /// Time budget per invocation (default 1000 ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Memory cap per runtime (default 64 MB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<usize>,
}

impl FunctionSpec {
    pub fn limits(&self) -> Limits {
        let defaults = Limits::default();
        Limits {
            timeout: self
                .timeout_ms
                .map(std::time::Duration::from_millis)
                .unwrap_or(defaults.timeout),
            memory_bytes: self
                .memory_mb
                .map(|m| m * 1024 * 1024)
                .unwrap_or(defaults.memory_bytes),
            ..defaults
        }
    }

    /// Checks the declarations themselves: names given once, known types.
    pub fn validate(&self) -> Result<(), String> {
        let mut seen = std::collections::HashSet::new();
        for decl in &self.settings {
            if decl.name.trim().is_empty() {
                return Err("a setting needs a `name`".into());
            }
            if !seen.insert(decl.name.as_str()) {
                return Err(format!("setting {:?} is declared twice", decl.name));
            }
            // The type check of a value answers for an unknown type.
            if let Err(e) = decl.check(&Value::Null) {
                if e.contains("unknown type") {
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Checks settings values (a JSON object) against the declarations: each
    /// of the declared type, the required ones given. Values the function
    /// does not declare are passed on (functions written for Segment read
    /// settings they never declared), and named by [`Self::undeclared`].
    pub fn check_settings(&self, values: &Value) -> Result<(), String> {
        let empty = serde_json::Map::new();
        let values = match values {
            Value::Null => &empty,
            Value::Object(m) => m,
            _ => return Err("`settings` must be an object".into()),
        };
        for decl in &self.settings {
            match values.get(&decl.name) {
                Some(v) => decl.check(v)?,
                None if decl.required => {
                    return Err(format!("required setting {:?} is missing", decl.name))
                }
                None => {}
            }
        }
        Ok(())
    }

    /// The names of given settings the function does not declare: a
    /// misspelt one is logged, not passed over in silence.
    pub fn undeclared<'v>(&self, values: &'v Value) -> Vec<&'v str> {
        values
            .as_object()
            .into_iter()
            .flat_map(|m| m.keys())
            .filter(|k| !self.settings.iter().any(|d| &d.name == *k))
            .map(String::as_str)
            .collect()
    }

    /// The values of encrypted settings (to redact).
    pub fn secrets(&self, values: &Value) -> Vec<String> {
        self.settings
            .iter()
            .filter(|d| d.encrypted)
            .filter_map(|d| values.get(&d.name))
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect()
    }
}

/// Destination and function names are parts of URLs and of file names:
/// letters, digits, `-`, `_` and `.`, as source slugs (plus the dot).
pub fn check_name(what: &str, name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= 100
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{what} name {name:?} must be 1 to 100 letters, digits, '-', '_' or '.'"
        ))
    }
}

/// A deployed function, loaded and checked.
pub struct LoadedFunction {
    pub code: Arc<FunctionCode>,
    pub kind: String,
    pub version: u32,
    pub spec: FunctionSpec,
    pub limits: Limits,
    /// The handlers it defines (`onTrack`, `onBatch`, `onRequest`, …).
    pub handlers: Vec<String>,
}

/// Source handlers, one of which a source function must define.
pub const SOURCE_HANDLERS: [&str; 2] = ["onRequest", "processEvents"];
/// Destination handlers, at least one of which a destination function must define.
pub const DESTINATION_HANDLERS: [&str; 8] = [
    "onTrack",
    "onIdentify",
    "onPage",
    "onScreen",
    "onGroup",
    "onAlias",
    "onDelete",
    "onBatch",
];

/// Refuses code that defines no handler its kind runs: deployed, it would
/// fail (or skip) every request or event it is given.
pub fn check_handlers(kind: &str, handlers: &[String]) -> Result<(), String> {
    let (expected, text): (&[&str], &str) = match kind {
        "source" => (
            &SOURCE_HANDLERS,
            "a source function must define onRequest(request, settings) or exports.processEvents",
        ),
        _ => (
            &DESTINATION_HANDLERS,
            "a destination function must define at least one of onTrack, onIdentify, onPage, onScreen, onGroup, onAlias, onDelete or onBatch (event, settings)",
        ),
    };
    if handlers.iter().any(|h| expected.contains(&h.as_str())) {
        Ok(())
    } else {
        Err(format!(
            "{text}; this code defines {}",
            if handlers.is_empty() {
                "no handler".to_string()
            } else {
                handlers.join(", ")
            }
        ))
    }
}

impl LoadedFunction {
    /// Loads `text` with its declarations and checks that it defines a
    /// handler of its kind. Also used for a deploy's candidate, before
    /// anything is stored.
    pub fn check(
        name: &str,
        kind: &str,
        version: u32,
        text: &str,
        spec: FunctionSpec,
    ) -> Result<LoadedFunction, String> {
        check_name("function", name)?;
        spec.validate()
            .map_err(|e| format!("function {name:?}: {e}"))?;
        let limits = spec.limits();
        let code = FunctionCode::new(name, &format!("{name}.js"), text);
        let handlers = functions::inspect(&code, &limits)
            .map_err(|e| format!("function {name:?} does not load: {e}"))?;
        check_handlers(kind, &handlers).map_err(|e| format!("function {name:?}: {e}"))?;
        Ok(LoadedFunction {
            code: Arc::new(code),
            kind: kind.to_string(),
            version,
            spec,
            limits,
            handlers,
        })
    }
}

/// Loads the deployed version of function `name`.
pub async fn load(store: &dyn Store, name: &str) -> Result<LoadedFunction, String> {
    load_version(store, name, None).await
}

/// Loads a version of function `name` (`None`: the deployed one) with the
/// declarations it was saved with.
pub async fn load_version(
    store: &dyn Store,
    name: &str,
    version: Option<u32>,
) -> Result<LoadedFunction, String> {
    let records = store.functions().await.map_err(|e| e.to_string())?;
    let record = records
        .into_iter()
        .find(|f| f.name == name)
        .ok_or_else(|| format!("unknown function {name:?}"))?;
    let stored = store
        .function_version(name, version)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| match version {
            None => format!("function {name:?} has no deployed version"),
            Some(v) => format!("function {name:?} has no version {v}"),
        })?;
    let spec: FunctionSpec = serde_json::from_value(stored.settings).unwrap_or_default();
    let kind = record.kind;
    // Blocking work (QuickJS loads the code): off the async threads.
    let name = name.to_string();
    tokio::task::spawn_blocking(move || {
        LoadedFunction::check(&name, &kind, stored.version, &stored.code, spec)
    })
    .await
    .map_err(|e| e.to_string())?
}

/// A function source's settings as stored: `{"function", "settings", "respond"}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SourceBinding {
    pub function: String,
    #[serde(default)]
    pub settings: Value,
    /// `ack` (default) or `function`.
    #[serde(default)]
    pub respond: Option<String>,
    /// The webhook catcher: `always` (default: the 10 most recent requests are
    /// kept) or `window` (only while a capture window is open, as in Segment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture: Option<String>,
}

/// Puts together a function source from the store.
pub async fn source_function(
    store: &dyn Store,
    slug: &str,
    binding: &SourceBinding,
) -> Result<SourceFunction, String> {
    check_binding(slug, binding)?;
    let f = load(store, &binding.function).await?;
    source_function_with(&f, slug, binding)
}

fn check_binding(slug: &str, binding: &SourceBinding) -> Result<(), String> {
    if !matches!(
        binding.respond.as_deref(),
        None | Some("ack") | Some("function")
    ) {
        return Err(format!(
            "source {slug:?}: `respond` must be \"ack\" or \"function\""
        ));
    }
    if !matches!(
        binding.capture.as_deref(),
        None | Some("always") | Some("window")
    ) {
        return Err(format!(
            "source {slug:?}: `capture` must be \"always\" or \"window\""
        ));
    }
    Ok(())
}

/// Puts together a function source running `f` (loaded already: the
/// deployed version, or a deploy's candidate).
pub fn source_function_with(
    f: &LoadedFunction,
    slug: &str,
    binding: &SourceBinding,
) -> Result<SourceFunction, String> {
    check_binding(slug, binding)?;
    if f.kind != "source" {
        return Err(format!(
            "function {:?} is a {} function, not a source function",
            binding.function, f.kind
        ));
    }
    f.spec
        .check_settings(&binding.settings)
        .map_err(|e| format!("source {slug:?}: {e}"))?;
    for name in f.spec.undeclared(&binding.settings) {
        tracing::warn!(source = %slug, setting = name, function = %binding.function, "setting not declared by the function (misspelt?)");
    }
    let settings = if binding.settings.is_null() {
        Value::Object(Default::default())
    } else {
        binding.settings.clone()
    };
    Ok(SourceFunction {
        slug: slug.to_string(),
        secrets: f.spec.secrets(&settings),
        code: f.code.clone(),
        settings,
        limits: f.limits,
        respond_inline: binding.respond.as_deref() == Some("function"),
        capture_always: binding.capture.as_deref() != Some("window"),
        unavailable: None,
    })
}

/// A source whose function cannot run (it does not load, or the source's
/// settings do not fit it): it keeps its requests, which wait, and shows
/// `reason`, until a deploy or a settings change lets it run.
pub fn unavailable_source(slug: &str, binding: &SourceBinding, reason: String) -> SourceFunction {
    SourceFunction {
        slug: slug.to_string(),
        code: Arc::new(FunctionCode::new(
            &binding.function,
            &format!("{}.js", binding.function),
            "",
        )),
        settings: binding.settings.clone(),
        limits: Limits::default(),
        respond_inline: binding.respond.as_deref() == Some("function"),
        secrets: Vec::new(),
        capture_always: binding.capture.as_deref() != Some("window"),
        unavailable: Some(reason),
    }
}

/// Puts together any destination.
pub async fn destination(
    store: &Arc<dyn Store>,
    pool: Option<&Arc<Pool>>,
    config: &DestinationConfig,
) -> Result<DestinationSpec, String> {
    destination_with(store, pool, config, None).await
}

/// Puts together any destination; a function destination runs `candidate`
/// when given (a deploy's), else its function's deployed version.
pub async fn destination_with(
    store: &Arc<dyn Store>,
    pool: Option<&Arc<Pool>>,
    config: &DestinationConfig,
    candidate: Option<&LoadedFunction>,
) -> Result<DestinationSpec, String> {
    check_name("destination", config.name())?;
    match config {
        DestinationConfig::Webhooks(w) => DestinationSpec::webhooks(w.clone(), store.clone()).await,
        DestinationConfig::Function(d) => {
            d.validate()?;
            let loaded;
            let f = match candidate {
                Some(f) => f,
                None => {
                    loaded = load(store.as_ref(), &d.function).await?;
                    &loaded
                }
            };
            if f.kind != "destination" {
                return Err(format!(
                    "destination {:?}: function {:?} is a {} function",
                    d.name, d.function, f.kind
                ));
            }
            let settings = serde_json::to_value(&d.settings).map_err(|e| e.to_string())?;
            f.spec
                .check_settings(&settings)
                .map_err(|e| format!("destination {:?}: {e}", d.name))?;
            for name in f.spec.undeclared(&settings) {
                tracing::warn!(destination = %d.name, setting = name, function = %d.function, "setting not declared by the function (misspelt?)");
            }
            let has_on_batch = f.handlers.iter().any(|h| h == "onBatch");
            if d.batch_size.is_some_and(|n| n > 1) && !has_on_batch {
                tracing::warn!(destination = %d.name, "batch_size > 1 but the function has no onBatch: events are delivered one by one");
            }
            let pool = pool.ok_or("functions are not enabled on this server")?;
            Ok(DestinationSpec {
                settings: SinkSettings {
                    name: d.name.clone(),
                    sources: d.sources.clone(),
                    batch_size: d.batch_size_for(has_on_batch),
                    batch_max_wait_ms: d.batch_max_wait_ms,
                    concurrency: d.concurrency,
                    enabled: d.enabled,
                    filter: d.filter.clone(),
                },
                transport: Arc::new(FunctionTransport {
                    name: d.name.clone(),
                    secrets: f.spec.secrets(&settings),
                    code: f.code.clone(),
                    settings,
                    limits: f.limits,
                    pool: pool.clone(),
                    store: store.clone(),
                    policy: d.retry_policy(),
                    retry_unknown_errors: d.retry_unknown_errors,
                }),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(settings: Value) -> FunctionSpec {
        serde_json::from_value(json!({ "settings": settings })).unwrap()
    }

    #[test]
    fn declarations_and_values_are_checked_by_name_and_type() {
        let good = spec(
            json!([{"name": "apiKey", "required": true, "encrypted": true}, {"name": "region"}]),
        );
        assert_eq!(good.validate(), Ok(()));
        assert_eq!(
            good.check_settings(&json!({"apiKey": "k", "region": "eu"})),
            Ok(())
        );
        // An undeclared one is passed on, and named (a misspelt name is logged).
        let typo = json!({"apiKey": "k", "apikey": "typo"});
        assert_eq!(good.check_settings(&typo), Ok(()));
        assert_eq!(good.undeclared(&typo), ["apikey"]);
        let err = good.check_settings(&json!({"region": "eu"})).unwrap_err();
        assert!(err.contains("required setting \"apiKey\""), "{err}");
        let err = good.check_settings(&json!({"apiKey": 5})).unwrap_err();
        assert!(err.contains("must be a string"), "{err}");

        let err = spec(json!([{"name": "a", "type": "strng"}]))
            .validate()
            .unwrap_err();
        assert!(err.contains("unknown type \"strng\""), "{err}");
        let err = spec(json!([{"name": "a"}, {"name": "a", "type": "number"}]))
            .validate()
            .unwrap_err();
        assert!(err.contains("declared twice"), "{err}");
    }

    #[test]
    fn names_are_url_and_file_safe() {
        for ok in ["hook", "warehouse-hook_2", "v1.2"] {
            assert_eq!(check_name("destination", ok), Ok(()));
        }
        for bad in ["", "a/b c", "a b", "é", &"x".repeat(101)] {
            assert!(check_name("destination", bad).is_err(), "{bad:?}");
        }
    }
}
