//! `switchyard.toml`: its shape is a contract (fields are added, never renamed).
//! String values may name environment variables as `${NAME}`.

use anyhow::{anyhow, bail, Context};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub sources: Vec<SourceConfig>,
    #[serde(default)]
    pub functions: Vec<FunctionConfig>,
    #[serde(default)]
    pub destinations: Vec<DestinationConfig>,
    /// The `[[destinations]]` tables as written (env expanded), stored as JSON.
    #[serde(skip)]
    pub raw_destinations: Vec<serde_json::Value>,
}

/// A TOML value as JSON.
pub fn toml_to_json(v: &toml::Value) -> serde_json::Value {
    match v {
        toml::Value::String(s) => serde_json::Value::String(s.clone()),
        toml::Value::Integer(i) => serde_json::Value::from(*i),
        toml::Value::Float(f) => serde_json::Value::from(*f),
        toml::Value::Boolean(b) => serde_json::Value::Bool(*b),
        toml::Value::Datetime(d) => serde_json::Value::String(d.to_string()),
        toml::Value::Array(a) => serde_json::Value::Array(a.iter().map(toml_to_json).collect()),
        toml::Value::Table(t) => serde_json::Value::Object(
            t.iter()
                .map(|(k, v)| (k.clone(), toml_to_json(v)))
                .collect(),
        ),
    }
}

/// `[server]`: every field can also be set by a flag or an environment variable.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    /// `nats://…` for the scale-out backend (not available yet).
    pub store: Option<String>,
    /// fsync every commit (default true); false = survives a process crash, not power loss.
    pub fsync: Option<bool>,
    pub dedup_window: Option<String>,
    /// Most message ids remembered for deduplication (default 2,000,000).
    pub dedup_max_ids: Option<usize>,
    /// How long delivered events, attempts and finished raw requests are kept (default 7d).
    pub retention: Option<String>,
    pub max_message_bytes: Option<usize>,
    pub max_batch_bytes: Option<usize>,
    pub max_batch_events: Option<usize>,
    /// How long a client may take to send a request's headers, and its body
    /// once it stalls; also how long a keep-alive connection may idle (default 60s).
    pub client_timeout: Option<String>,
    pub log_format: Option<String>,
    /// Hosts functions may `fetch` even when private or loopback.
    #[serde(default)]
    pub fetch_allow: Vec<String>,
    /// Hosts functions may never `fetch`.
    #[serde(default)]
    pub fetch_deny: Vec<String>,
    /// Threads running functions (default: the number of cores).
    pub function_workers: Option<usize>,
    /// Largest raw request a function endpoint accepts (default 2 MB).
    pub max_function_body_bytes: Option<usize>,
    /// Delay before a failed source-function run is retried; doubles each
    /// time, 5 attempts in all (default 1000 ms).
    pub function_retry_initial_ms: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    pub slug: String,
    #[serde(default = "tracking")]
    pub kind: String,
    pub write_key: Option<String>,
    pub function: Option<String>,
    pub token: Option<String>,
    #[serde(default)]
    pub settings: BTreeMap<String, toml::Value>,
    /// `ack` (default): answer 200 once stored. `function`: run the function
    /// inline and answer with what it returns (challenge handshakes).
    pub respond: Option<String>,
    /// The webhook catcher: `always` (default, the 10 most recent requests)
    /// or `window` (only while a capture window is open).
    pub capture: Option<String>,
}

fn tracking() -> String {
    "tracking".to_string()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionConfig {
    pub name: String,
    pub kind: String,
    /// Relative paths are resolved from the configuration file's directory.
    pub file: PathBuf,
    /// The settings the function declares.
    #[serde(default)]
    pub settings: Vec<SettingDecl>,
    /// Time budget per invocation (default 1000 ms, Segment's limit).
    pub timeout_ms: Option<u64>,
    /// Memory cap per runtime (default 64 MB).
    pub memory_mb: Option<usize>,
}

pub use delivery::catalog::SettingDecl;

impl FunctionConfig {
    /// What the function declares besides its code, as the store keeps it.
    pub fn spec(&self) -> delivery::catalog::FunctionSpec {
        delivery::catalog::FunctionSpec {
            settings: self.settings.clone(),
            timeout_ms: self.timeout_ms,
            memory_mb: self.memory_mb,
        }
    }
}

pub use delivery::DestinationConfig;

/// Replaces `${NAME}` in every string with the environment variable's value;
/// `$${` is a literal `${`.
fn expand_env(value: &mut toml::Value, path: &str) -> anyhow::Result<()> {
    match value {
        toml::Value::String(s) => {
            let mut out = String::new();
            let mut rest = s.as_str();
            while let Some(start) = rest.find("${") {
                if rest[..start].ends_with('$') {
                    out.push_str(&rest[..start - 1]);
                    out.push_str("${");
                    rest = &rest[start + 2..];
                    continue;
                }
                out.push_str(&rest[..start]);
                let after = &rest[start + 2..];
                let end = after
                    .find('}')
                    .ok_or_else(|| anyhow!("{path}: unterminated ${{…}} in {s:?}"))?;
                let name = &after[..end];
                let v = std::env::var(name)
                    .map_err(|_| anyhow!("{path}: environment variable {name} is not set"))?;
                out.push_str(&v);
                rest = &after[end + 1..];
            }
            out.push_str(rest);
            *s = out;
        }
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                expand_env(item, &format!("{path}[{i}]"))?;
            }
        }
        toml::Value::Table(t) => {
            for (k, v) in t.iter_mut() {
                expand_env(v, &format!("{path}.{k}"))?;
            }
        }
        _ => {}
    }
    Ok(())
}

impl Config {
    pub fn parse(text: &str, origin: &str) -> anyhow::Result<Config> {
        let mut value: toml::Value =
            toml::from_str(text).with_context(|| format!("{origin}: invalid TOML"))?;
        expand_env(&mut value, origin)?;
        let raw_destinations = value
            .get("destinations")
            .and_then(toml::Value::as_array)
            .map(|a| a.iter().map(toml_to_json).collect())
            .unwrap_or_default();
        let mut config: Config = value
            .try_into()
            .map_err(|e: toml::de::Error| anyhow!("{origin}: {}", e.message()))?;
        config.raw_destinations = raw_destinations;
        config.validate().with_context(|| origin.to_string())?;
        Ok(config)
    }

    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read configuration {}", path.display()))?;
        Self::parse(&text, &path.display().to_string())
    }

    fn validate(&self) -> anyhow::Result<()> {
        let mut slugs = std::collections::HashSet::new();
        let mut write_keys = std::collections::HashMap::new();
        for s in &self.sources {
            if s.slug.is_empty()
                || !s
                    .slug
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                bail!(
                    "source slug {:?} must be non-empty and use only letters, digits, '-' and '_'",
                    s.slug
                );
            }
            if !slugs.insert(s.slug.as_str()) {
                bail!("source {:?} is declared twice", s.slug);
            }
            if let Some(key) = &s.write_key {
                if key.is_empty() {
                    bail!("source {:?}: `write_key` must not be empty", s.slug);
                }
                // A write key names the source its events go to: two sources
                // with one key would take each other's events.
                if let Some(other) = write_keys.insert(key.as_str(), s.slug.as_str()) {
                    bail!(
                        "sources {other:?} and {:?} have the same `write_key`: each source needs its own",
                        s.slug
                    );
                }
            }
            match s.kind.as_str() {
                "tracking" => {}
                "function" => {
                    let Some(name) = &s.function else {
                        bail!(
                            "source {:?} has kind = \"function\" but no `function`",
                            s.slug
                        );
                    };
                    let Some(f) = self.functions.iter().find(|f| &f.name == name) else {
                        bail!(
                            "source {:?}: function {name:?} is not declared in [[functions]]",
                            s.slug
                        );
                    };
                    if f.kind != "source" {
                        bail!(
                            "source {:?}: function {name:?} is a {} function, not a source function",
                            s.slug,
                            f.kind
                        );
                    }
                    for decl in &f.settings {
                        match s.settings.get(&decl.name) {
                            Some(v) => decl.check(&toml_to_json(v)).map_err(|e| anyhow!("source {:?}: {e}", s.slug))?,
                            None if decl.required => bail!(
                                "source {:?}: required setting {:?} of function {name:?} is missing",
                                s.slug,
                                decl.name
                            ),
                            None => {}
                        }
                    }
                    if !matches!(s.capture.as_deref(), None | Some("always") | Some("window")) {
                        bail!(
                            "source {:?}: `capture` must be \"always\" or \"window\"",
                            s.slug
                        );
                    }
                    if !matches!(s.respond.as_deref(), None | Some("ack") | Some("function")) {
                        bail!(
                            "source {:?}: `respond` must be \"ack\" or \"function\"",
                            s.slug
                        );
                    }
                }
                other => bail!(
                    "source {:?}: unknown kind {other:?} (expected \"tracking\" or \"function\")",
                    s.slug
                ),
            }
        }
        let mut names = std::collections::HashSet::new();
        for d in &self.destinations {
            if !names.insert(d.name()) {
                bail!("destination {:?} is declared twice", d.name());
            }
            let sources = match d {
                DestinationConfig::Webhooks(w) => {
                    w.validate().map_err(|e| anyhow!(e))?;
                    &w.sources
                }
                DestinationConfig::Function(f) => {
                    f.validate().map_err(|e| anyhow!(e))?;
                    let Some(decl) = self.functions.iter().find(|x| x.name == f.function) else {
                        bail!(
                            "destination {:?}: function {:?} is not declared in [[functions]]",
                            f.name,
                            f.function
                        );
                    };
                    if decl.kind != "destination" {
                        bail!("destination {:?}: function {:?} is a {} function, not a destination function", f.name, f.function, decl.kind);
                    }
                    for setting in &decl.settings {
                        match f.settings.get(&setting.name) {
                            Some(v) => setting.check(&toml_to_json(v)).map_err(|e| anyhow!("destination {:?}: {e}", f.name))?,
                            None if setting.required => bail!(
                                "destination {:?}: required setting {:?} of function {:?} is missing",
                                f.name,
                                setting.name,
                                f.function
                            ),
                            None => {}
                        }
                    }
                    &f.sources
                }
            };
            for s in sources {
                if !slugs.contains(s.as_str()) {
                    bail!(
                        "destination {:?}: source {s:?} is not declared in [[sources]]",
                        d.name()
                    );
                }
            }
        }
        for f in &self.functions {
            if !matches!(f.kind.as_str(), "source" | "destination") {
                bail!(
                    "function {:?}: unknown kind {:?} (expected \"source\" or \"destination\")",
                    f.name,
                    f.kind
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_design_example_parses() {
        let text = include_str!("../../../examples/switchyard.toml");
        let c = Config::parse(text, "example").unwrap();
        assert_eq!(c.sources.len(), 2);
        let DestinationConfig::Webhooks(w) = &c.destinations[0] else {
            panic!("webhooks expected")
        };
        assert_eq!(w.urls.len(), 1);
        assert_eq!(w.shared_secret.as_deref(), Some("s3cret"));
        assert_eq!(w.max_retry_age, std::time::Duration::from_secs(4 * 3600));
    }

    #[test]
    fn unknown_fields_are_named() {
        let err = Config::parse(
            "[[destinations]]\nkind = \"webhooks\"\nname = \"d\"\nurls = [\"http://x\"]\nshared_secert = \"x\"\n",
            "t",
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("shared_secert"), "{err:#}");
    }

    #[test]
    fn too_many_urls_are_refused() {
        let urls: Vec<String> = (0..6).map(|i| format!("\"http://h/{i}\"")).collect();
        let text = format!(
            "[[destinations]]\nkind = \"webhooks\"\nname = \"d\"\nurls = [{}]\n",
            urls.join(",")
        );
        let err = Config::parse(&text, "t").unwrap_err();
        assert!(format!("{err:#}").contains("1 to 5"), "{err:#}");
    }

    #[test]
    fn env_vars_expand() {
        std::env::set_var("SWITCHYARD_TEST_SECRET", "from-env");
        let c = Config::parse(
            "[[sources]]\nslug = \"web\"\nwrite_key = \"${SWITCHYARD_TEST_SECRET}\"\n",
            "t",
        )
        .unwrap();
        assert_eq!(c.sources[0].write_key.as_deref(), Some("from-env"));
        let err = Config::parse(
            "[[sources]]\nslug = \"web\"\nwrite_key = \"${SWITCHYARD_UNSET_VAR_X}\"\n",
            "t",
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("SWITCHYARD_UNSET_VAR_X"));
        // `$${` is written as a literal `${`.
        let c = Config::parse(
            "[[sources]]\nslug = \"web\"\nwrite_key = \"a$${b}-${SWITCHYARD_TEST_SECRET}\"\n",
            "t",
        )
        .unwrap();
        assert_eq!(c.sources[0].write_key.as_deref(), Some("a${b}-from-env"));
    }

    #[test]
    fn destinations_must_name_declared_sources() {
        let err = Config::parse(
            "[[destinations]]\nkind = \"webhooks\"\nname = \"d\"\nsources = [\"nope\"]\nurls = [\"http://x\"]\n",
            "t",
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("nope"));
    }
}
