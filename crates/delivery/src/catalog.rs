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

    /// Checks settings values (a JSON object) against the declarations.
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

/// A deployed function, loaded and checked.
pub struct LoadedFunction {
    pub code: Arc<FunctionCode>,
    pub kind: String,
    pub version: u32,
    pub spec: FunctionSpec,
    pub limits: Limits,
    /// The handlers it defines (`onTrack`, `onBatch`, …).
    pub handlers: Vec<String>,
}

/// Loads the deployed version of function `name`.
pub async fn load(store: &dyn Store, name: &str) -> Result<LoadedFunction, String> {
    let records = store.functions().await.map_err(|e| e.to_string())?;
    let record = records
        .into_iter()
        .find(|f| f.name == name)
        .ok_or_else(|| format!("unknown function {name:?}"))?;
    let (version, text) = store
        .function_code(name, None)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("function {name:?} has no deployed version"))?;
    let spec: FunctionSpec = serde_json::from_value(record.settings).unwrap_or_default();
    let limits = spec.limits();
    let code = FunctionCode::new(name, &format!("{name}.js"), &text);
    let handlers = functions::inspect(&code, &limits)
        .map_err(|e| format!("function {name:?} does not load: {e}"))?;
    Ok(LoadedFunction {
        code: Arc::new(code),
        kind: record.kind,
        version,
        spec,
        limits,
        handlers,
    })
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
    let f = load(store, &binding.function).await?;
    if f.kind != "source" {
        return Err(format!(
            "function {:?} is a {} function, not a source function",
            binding.function, f.kind
        ));
    }
    f.spec
        .check_settings(&binding.settings)
        .map_err(|e| format!("source {slug:?}: {e}"))?;
    let settings = if binding.settings.is_null() {
        Value::Object(Default::default())
    } else {
        binding.settings.clone()
    };
    Ok(SourceFunction {
        slug: slug.to_string(),
        secrets: f.spec.secrets(&settings),
        code: f.code,
        settings,
        limits: f.limits,
        respond_inline: binding.respond.as_deref() == Some("function"),
        capture_always: binding.capture.as_deref() != Some("window"),
    })
}

/// Puts together any destination.
pub async fn destination(
    store: &Arc<dyn Store>,
    pool: Option<&Arc<Pool>>,
    config: &DestinationConfig,
) -> Result<DestinationSpec, String> {
    match config {
        DestinationConfig::Webhooks(w) => DestinationSpec::webhooks(w.clone(), store.clone()).await,
        DestinationConfig::Function(d) => {
            d.validate()?;
            let f = load(store.as_ref(), &d.function).await?;
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
            let batched = d.batch_size > 1 && f.handlers.iter().any(|h| h == "onBatch");
            if d.batch_size > 1 && !batched {
                tracing::warn!(destination = %d.name, "batch_size > 1 but the function has no onBatch: events are delivered one by one");
            }
            let pool = pool.ok_or("functions are not enabled on this server")?;
            Ok(DestinationSpec {
                settings: SinkSettings {
                    name: d.name.clone(),
                    sources: d.sources.clone(),
                    batch_size: if batched { d.batch_size } else { 1 },
                    batch_max_wait_ms: d.batch_max_wait_ms,
                    concurrency: d.concurrency,
                    enabled: d.enabled,
                    filter: d.filter.clone(),
                },
                transport: Arc::new(FunctionTransport {
                    name: d.name.clone(),
                    secrets: f.spec.secrets(&settings),
                    code: f.code,
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
