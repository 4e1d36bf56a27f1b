//! `switchyard apply`: reconciles a running server to a configuration file
//! through the API, idempotently, printing the plan first.

use crate::api_cli::{api_path, Client, Remote};
use crate::config::{Config, FunctionConfig};

use anyhow::Context;
use clap::Args;
use serde_json::{json, Value};
use server::manage::{binding_digest, config_digest};
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// The configuration file to apply.
    #[arg(long, env = "SWITCHYARD_CONFIG", default_value = "switchyard.toml")]
    pub config: PathBuf,
    /// Print the plan and change nothing. Exits 1 when a step would be
    /// refused: a write key another source of the server has.
    #[arg(long)]
    pub dry_run: bool,
    /// Keep the destinations the file does not declare. By default `apply`
    /// makes the server match the file and removes them, those created
    /// through the API included (a start of the server keeps those).
    #[arg(long)]
    pub keep_unlisted: bool,
}

enum Step {
    CreateFunction {
        name: String,
        body: Value,
    },
    ChangeFunction {
        name: String,
        body: Value,
    },
    CreateSource {
        slug: String,
        body: Value,
    },
    ChangeSource {
        slug: String,
        body: Value,
    },
    /// The file declares a write key or token the source does not have.
    SetCredential {
        slug: String,
        field: &'static str,
        value: String,
    },
    CreateDestination {
        name: String,
        body: Value,
    },
    ChangeDestination {
        name: String,
        body: Value,
    },
    /// `origin`: `file` (declared by the server's own file at a start) or
    /// `api` (created through the API, `apply` included).
    RemoveDestination {
        name: String,
        origin: String,
    },
}

pub async fn run(remote: Remote, args: ApplyArgs) -> anyhow::Result<()> {
    let config = Config::load(&args.config)?;
    let client = Client::new(&remote)?;
    use reqwest::Method;
    let sources = client
        .send(Method::GET, &api_path(&["sources"], &[]), None)
        .await
        .with_context(|| "list sources")?;
    let existing_sources: Vec<String> = sources["data"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s["slug"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let destinations = client
        .send(Method::GET, &api_path(&["destinations"], &[]), None)
        .await
        .with_context(|| "list destinations")?;
    let existing_destinations: Vec<String> = destinations["data"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|d| d["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();

    let mut steps = Vec::new();
    let config_dir = args
        .config
        .parent()
        .map(|d| d.to_path_buf())
        .unwrap_or_default();
    // Functions first: the sources and destinations below may run them.
    for f in &config.functions {
        if let Some(step) = function_step(&client, f, &config_dir).await? {
            steps.push(step);
        }
    }
    for s in &config.sources {
        if existing_sources.contains(&s.slug) {
            if let Some(step) = source_change(&client, s).await? {
                steps.push(step);
            }
            if let Some(step) = credential_change(&client, s).await? {
                steps.push(step);
            }
            continue;
        }
        let mut body = json!({ "slug": s.slug, "kind": s.kind });
        if let Some(k) = &s.write_key {
            body["write_key"] = Value::String(k.clone());
        }
        if s.kind == "function" {
            body["function"] = json!(s.function);
            body["settings"] = serde_json::to_value(&s.settings)?;
            for (field, value) in [
                ("respond", &s.respond),
                ("capture", &s.capture),
                ("token", &s.token),
            ] {
                if let Some(v) = value {
                    body[field] = Value::String(v.clone());
                }
            }
        }
        steps.push(Step::CreateSource {
            slug: s.slug.clone(),
            body,
        });
    }
    for (d, raw) in config.destinations.iter().zip(&config.raw_destinations) {
        let name = d.name().to_string();
        if !existing_destinations.contains(&name) {
            steps.push(Step::CreateDestination {
                name,
                body: raw.clone(),
            });
            continue;
        }
        let current = client
            .send(Method::GET, &api_path(&["destinations", &name], &[]), None)
            .await
            .with_context(|| format!("read destination {name:?}"))?;
        if shown_digest(&current["digest"])? != config_digest(raw) {
            steps.push(Step::ChangeDestination {
                name,
                body: raw.clone(),
            });
        }
    }
    let declared: Vec<&str> = config.destinations.iter().map(|d| d.name()).collect();
    let mut kept = Vec::new();
    for name in &existing_destinations {
        if declared.contains(&name.as_str()) {
            continue;
        }
        if args.keep_unlisted {
            kept.push(name.clone());
            continue;
        }
        let current = client
            .send(Method::GET, &api_path(&["destinations", name], &[]), None)
            .await
            .with_context(|| format!("read destination {name:?}"))?;
        steps.push(Step::RemoveDestination {
            name: name.clone(),
            origin: current["origin"].as_str().unwrap_or("api").to_string(),
        });
    }

    // Functions first (sources and destinations run them), then the write
    // keys and tokens the file gives (a new source may take a key another one
    // gives up), then sources, then destinations; the file's order otherwise.
    steps.sort_by_key(Step::phase);
    let blocked = taken_write_keys(&client, &sources, &steps).await?;
    let plan: Vec<(&str, &str, &str, String)> = steps
        .iter()
        .map(|step| {
            let (action, kind, name, note) = step.describe();
            match blocked.iter().find(|b| b.step_is(step)) {
                Some(b) if note.is_empty() => (action, kind, name, b.note()),
                Some(b) => (action, kind, name, format!("{note}; {}", b.note())),
                None => (action, kind, name, note),
            }
        })
        .chain(kept.iter().map(|name| {
            (
                "keep",
                "destination",
                name.as_str(),
                "not in the file; --keep-unlisted".to_string(),
            )
        }))
        .collect();
    // With --json, one document after the work: the plan, whether it was
    // applied, and the credentials generated for new sources (shown once).
    let mut report = json!({
        "server": remote.server,
        "config": args.config.display().to_string(),
        "dry_run": args.dry_run,
        "steps": plan
            .iter()
            .map(|(action, kind, name, note)| json!({"action": action, "kind": kind, "name": name, "note": note}))
            .collect::<Vec<_>>(),
        "applied": false,
        "credentials": {},
    });
    if !remote.json {
        println!("plan for {} ({}):", remote.server, args.config.display());
        if steps.is_empty() {
            println!("  no changes");
        }
        for (action, kind, name, note) in &plan {
            let sign = match *action {
                "create" => "+",
                "remove" => "-",
                "keep" => "=",
                _ => "~",
            };
            let note = if note.is_empty() {
                String::new()
            } else {
                format!(" ({note})")
            };
            println!("  {sign} {action} {kind} {name}{note}");
        }
    }
    if args.dry_run || steps.is_empty() || !blocked.is_empty() {
        if remote.json {
            println!("{report}");
        }
        return match blocked.first() {
            None => Ok(()),
            Some(b) => Err(b.error(blocked.len())),
        };
    }
    // Two sources that trade keys would each find its new key still taken:
    // every key about to be set is first replaced by a throwaway one.
    let new_keys = steps
        .iter()
        .filter(|s| {
            matches!(
                s,
                Step::SetCredential {
                    field: "write_key",
                    ..
                }
            )
        })
        .count();
    if new_keys > 1 {
        for step in &steps {
            if let Step::SetCredential {
                slug,
                field: "write_key",
                ..
            } = step
            {
                client
                    .send(
                        Method::POST,
                        &api_path(&["sources", slug, "rotate"], &[]),
                        None,
                    )
                    .await
                    .with_context(|| format!("free the write key of source {slug:?}"))?;
            }
        }
    }
    for step in steps {
        match step {
            Step::CreateFunction { name, body } => {
                client
                    .send(Method::POST, &api_path(&["functions"], &[]), Some(body))
                    .await
                    .with_context(|| format!("create function {name:?}"))?;
            }
            Step::ChangeFunction { name, body } => {
                client
                    .send(
                        Method::PUT,
                        &api_path(&["functions", &name], &[]),
                        Some(body),
                    )
                    .await
                    .with_context(|| format!("change function {name:?}"))?;
            }
            Step::CreateSource { slug, body } => {
                let v = client
                    .send(
                        Method::POST,
                        &api_path(&["sources"], &[]),
                        Some(body.clone()),
                    )
                    .await
                    .with_context(|| format!("create source {slug:?}"))?;
                let (credential, field) = if body["kind"] == "function" {
                    ("token", "token")
                } else {
                    ("write key", "write_key")
                };
                if body.get(field).is_none() {
                    let shown = v[field].as_str().unwrap_or("");
                    if remote.json {
                        report["credentials"][&slug] = json!({ field: shown });
                    } else {
                        println!("  source {slug}: {credential} {shown} (shown once)");
                    }
                }
            }
            Step::ChangeSource { slug, body } => {
                client
                    .send(
                        Method::PATCH,
                        &api_path(&["sources", &slug], &[]),
                        Some(body),
                    )
                    .await
                    .with_context(|| format!("change source {slug:?}"))?;
            }
            Step::SetCredential { slug, field, value } => {
                client
                    .send(
                        Method::POST,
                        &api_path(&["sources", &slug, "rotate"], &[]),
                        Some(json!({ field: value })),
                    )
                    .await
                    .with_context(|| format!("set the {field} of source {slug:?}"))?;
            }
            Step::CreateDestination { name, body } => {
                client
                    .send(
                        Method::POST,
                        &api_path(&["destinations"], &[]),
                        Some(body.clone()),
                    )
                    .await
                    .with_context(|| format!("create destination {name:?}"))?;
            }
            Step::ChangeDestination { name, body } => {
                client
                    .send(
                        Method::PUT,
                        &api_path(&["destinations", &name], &[]),
                        Some(body.clone()),
                    )
                    .await
                    .with_context(|| format!("change destination {name:?}"))?;
            }
            Step::RemoveDestination { name, .. } => {
                client
                    .send(
                        Method::DELETE,
                        &api_path(&["destinations", &name], &[]),
                        None,
                    )
                    .await
                    .with_context(|| format!("remove destination {name:?}"))?;
            }
        }
    }
    if remote.json {
        report["applied"] = Value::Bool(true);
        println!("{report}");
    } else {
        println!("applied");
    }
    Ok(())
}

impl Step {
    /// The order steps are applied in (see where they are sorted).
    fn phase(&self) -> u8 {
        match self {
            Step::CreateFunction { .. } | Step::ChangeFunction { .. } => 0,
            Step::SetCredential { .. } => 1,
            Step::CreateSource { .. } | Step::ChangeSource { .. } => 2,
            Step::CreateDestination { .. }
            | Step::ChangeDestination { .. }
            | Step::RemoveDestination { .. } => 3,
        }
    }

    /// (action, kind, name, note) as the plan shows it.
    fn describe(&self) -> (&'static str, &'static str, &str, String) {
        match self {
            Step::CreateFunction { name, .. } => ("create", "function", name, "deployed".into()),
            Step::ChangeFunction { name, .. } => (
                "change",
                "function",
                name,
                "a new version, deployed where it runs".into(),
            ),
            Step::CreateSource { slug, .. } => ("create", "source", slug, String::new()),
            Step::ChangeSource { slug, .. } => ("change", "source", slug, String::new()),
            Step::SetCredential { slug, field, .. } => (
                "change",
                "source",
                slug,
                format!("its {} from the file", field.replace('_', " ")),
            ),
            Step::CreateDestination { name, .. } => ("create", "destination", name, String::new()),
            Step::ChangeDestination { name, .. } => ("change", "destination", name, String::new()),
            Step::RemoveDestination { name, origin } if origin == "api" => (
                "remove",
                "destination",
                name,
                "created through the API; --keep-unlisted keeps it".into(),
            ),
            Step::RemoveDestination { name, .. } => ("remove", "destination", name, String::new()),
        }
    }
}

/// What a declared function needs: created, a new version deployed (its code,
/// settings or limits differ from the deployed version's), or nothing.
async fn function_step(
    client: &Client,
    f: &FunctionConfig,
    config_dir: &std::path::Path,
) -> anyhow::Result<Option<Step>> {
    use reqwest::Method;
    let path = config_dir.join(&f.file);
    let code = std::fs::read_to_string(&path)
        .with_context(|| format!("function {:?}: cannot read {}", f.name, path.display()))?;
    let spec = f.spec();
    // The plan is only worth showing for code that loads: checked here, so a
    // dry run names the file as the start would.
    delivery::catalog::LoadedFunction::check(&f.name, &f.kind, 0, &code, spec.clone())
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let limits = spec.limits();
    // Limits are sent in full: a version saved over the API keeps the
    // previous version's value of any limit left out.
    let body = json!({
        "name": f.name,
        "kind": f.kind,
        "code": code,
        "settings": spec.settings,
        "timeout_ms": limits.timeout.as_millis() as u64,
        "memory_mb": limits.memory_bytes / (1024 * 1024),
        "deploy": true,
    });
    let current = match client
        .send_optional(Method::GET, &api_path(&["functions", &f.name], &[]))
        .await
        .with_context(|| format!("read function {:?}", f.name))?
    {
        None => {
            return Ok(Some(Step::CreateFunction {
                name: f.name.clone(),
                body,
            }))
        }
        Some(current) => current,
    };
    let record = &current["function"];
    if record["kind"].as_str() != Some(f.kind.as_str()) {
        anyhow::bail!(
            "function {:?} is a {} function on the server and a {} function in the file: a function's kind cannot change",
            f.name,
            record["kind"].as_str().unwrap_or("?"),
            f.kind
        );
    }
    let deployed_is_latest = record["deployed_version"] == record["latest_version"];
    let stored: delivery::catalog::FunctionSpec =
        serde_json::from_value(record["settings"].clone()).unwrap_or_default();
    let same_spec = serde_json::to_value(&stored.settings)?
        == serde_json::to_value(&spec.settings)?
        && stored.limits().timeout == limits.timeout
        && stored.limits().memory_bytes == limits.memory_bytes;
    if deployed_is_latest && same_spec && current["code"].as_str() == Some(code.as_str()) {
        return Ok(None);
    }
    Ok(Some(Step::ChangeFunction {
        name: f.name.clone(),
        body,
    }))
}

/// A function source whose function, settings, `respond` or `capture` differ
/// from the running one's (compared by digest: the API never shows settings)
/// needs a change; a tracking source never does (its key is rotated, not
/// declared).
async fn source_change(
    client: &Client,
    s: &crate::config::SourceConfig,
) -> anyhow::Result<Option<Step>> {
    let Some(function) = s.function.clone().filter(|_| s.kind == "function") else {
        return Ok(None);
    };
    let binding = delivery::catalog::SourceBinding {
        function,
        settings: serde_json::to_value(&s.settings)?,
        respond: s.respond.clone(),
        capture: s.capture.clone(),
    };
    let current = client
        .send(
            reqwest::Method::GET,
            &api_path(&["sources", &s.slug], &[]),
            None,
        )
        .await
        .with_context(|| format!("read source {:?}", s.slug))?;
    if current["function"].is_null() {
        anyhow::bail!(
            "source {:?} is a tracking source on the server and a function source in the file: a source's kind cannot change",
            s.slug
        );
    }
    if shown_digest(&current["function"]["digest"])? == binding_digest(&binding) {
        return Ok(None);
    }
    // A PATCH merges settings: one the server has and the file does not
    // is removed by name (`null`), or every apply would plan it again.
    let mut settings = binding.settings.clone();
    if let (Some(wanted), Some(stored)) = (
        settings.as_object_mut(),
        current["function"]["settings"].as_object(),
    ) {
        for key in stored.keys() {
            wanted.entry(key.clone()).or_insert(Value::Null);
        }
    }
    Ok(Some(Step::ChangeSource {
        slug: s.slug.clone(),
        body: json!({
            "function": binding.function,
            "settings": settings,
            "respond": binding.respond.as_deref().unwrap_or("ack"),
            "capture": binding.capture.as_deref().unwrap_or("always"),
        }),
    }))
}

/// A write key (tracking source) or token (function source) the file
/// declares and the server's source does not have, as a start would set it.
/// The server compares it with the stored digest (`rotate` with `dry_run`).
async fn credential_change(
    client: &Client,
    s: &crate::config::SourceConfig,
) -> anyhow::Result<Option<Step>> {
    let (field, declared) = if s.kind == "function" {
        ("token", &s.token)
    } else {
        ("write_key", &s.write_key)
    };
    let Some(value) = declared else {
        return Ok(None);
    };
    let answer = client
        .send(
            reqwest::Method::POST,
            &api_path(&["sources", &s.slug, "rotate"], &[]),
            Some(json!({ field: value, "dry_run": true })),
        )
        .await
        .map_err(|e| {
            if e.to_string().contains("read-only") {
                anyhow::anyhow!(NEEDS_FULL_TOKEN)
            } else {
                e.context(format!("compare the {field} of source {:?}", s.slug))
            }
        })?;
    Ok((answer["changed"] == true).then(|| Step::SetCredential {
        slug: s.slug.clone(),
        field,
        value: value.clone(),
    }))
}

/// A write key the plan sets that the apply could not set: the server
/// refuses a key another source has (`409`), and would refuse it only once
/// the steps before it were applied.
enum Blocked {
    /// `owner`, which keeps its key through the apply, has it.
    Taken { slug: String, owner: String },
    /// Whether another source has it could not be asked: the token is
    /// read-only, and so may not compare write keys.
    Unknown { slug: String },
}

impl Blocked {
    fn slug(&self) -> &str {
        match self {
            Blocked::Taken { slug, .. } | Blocked::Unknown { slug } => slug,
        }
    }

    /// Whether `step` is the one that sets the key.
    fn step_is(&self, step: &Step) -> bool {
        match step {
            Step::CreateSource { slug, body } => {
                slug == self.slug() && body.get("write_key").is_some()
            }
            Step::SetCredential {
                slug,
                field: "write_key",
                ..
            } => slug == self.slug(),
            _ => false,
        }
    }

    /// What the plan shows on the step.
    fn note(&self) -> String {
        match self {
            Blocked::Taken { owner, .. } => {
                format!("its write key already belongs to source {owner:?}")
            }
            Blocked::Unknown { .. } => {
                "whether another source has its write key is unknown to a read-only token".into()
            }
        }
    }

    /// The error that ends the command, after the plan; `count` is how many
    /// steps are blocked.
    fn error(&self, count: usize) -> anyhow::Error {
        let more = match count {
            1 => String::new(),
            n => format!(" (and {} more: see the plan)", n - 1),
        };
        match self {
            Blocked::Taken { slug, owner } => crate::api_cli::ApiFailure(format!(
                "the write key the file gives source {slug:?} already belongs to source {owner:?}, \
                 which keeps it: each source needs its own{more}; nothing was changed"
            ))
            .into(),
            Blocked::Unknown { slug } => anyhow::anyhow!(
                "cannot tell whether another source already has the write key the file gives \
                 source {slug:?}{more}: the server compares write keys only for an admin token \
                 or a full API token, not a read-only one; nothing was changed"
            ),
        }
    }
}

/// The write keys the plan sets (for new sources and for existing ones) that
/// a source on the server already has and keeps through the apply: one the
/// file does not name, or names without a key. Loading the file refuses a
/// key it gives twice, but only the server knows the others, and it never
/// shows a key: each of its tracking sources is asked whether it has it
/// (`rotate` with `dry_run`, which changes nothing). A source the plan gives
/// a key of the file gives up its own before any source takes one, so it
/// keeps none and is not asked.
async fn taken_write_keys(
    client: &Client,
    sources: &Value,
    steps: &[Step],
) -> anyhow::Result<Vec<Blocked>> {
    let wanted: Vec<(&str, &str)> = steps
        .iter()
        .filter_map(|step| match step {
            Step::CreateSource { slug, body } => body
                .get("write_key")
                .and_then(Value::as_str)
                .map(|key| (slug.as_str(), key)),
            Step::SetCredential {
                slug,
                field: "write_key",
                value,
            } => Some((slug.as_str(), value.as_str())),
            _ => None,
        })
        .collect();
    let rekeyed: Vec<&str> = steps
        .iter()
        .filter_map(|step| match step {
            Step::SetCredential {
                slug,
                field: "write_key",
                ..
            } => Some(slug.as_str()),
            _ => None,
        })
        .collect();
    let keepers: Vec<&str> = sources["data"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|s| s["kind"] == "tracking")
                .filter_map(|s| s["slug"].as_str())
                .filter(|slug| !rekeyed.contains(slug))
                .collect()
        })
        .unwrap_or_default();
    let mut blocked = Vec::new();
    for (slug, key) in wanted {
        for owner in keepers.iter().filter(|o| **o != slug) {
            let (status, answer) = client
                .exchange(
                    reqwest::Method::POST,
                    &api_path(&["sources", owner, "rotate"], &[]),
                    Some(json!({ "write_key": key, "dry_run": true })),
                )
                .await
                .with_context(|| format!("compare the write key of source {slug:?}"))?;
            match status {
                s if s.is_success() => {
                    if answer["changed"] == false {
                        blocked.push(Blocked::Taken {
                            slug: slug.to_string(),
                            owner: owner.to_string(),
                        });
                        break;
                    }
                }
                reqwest::StatusCode::FORBIDDEN if answer["error"]["code"] == "read_only_token" => {
                    blocked.push(Blocked::Unknown {
                        slug: slug.to_string(),
                    });
                    break;
                }
                // Deleted since it was listed: it has no key any more.
                reqwest::StatusCode::NOT_FOUND => {}
                s => {
                    return Err(crate::api_cli::failure(s, &answer).context(format!(
                        "compare the write key of source {slug:?} with source {owner:?}'s"
                    )))
                }
            }
        }
    }
    Ok(blocked)
}

/// A digest the server showed; it shows none to a read-only token.
fn shown_digest(digest: &Value) -> anyhow::Result<&str> {
    digest
        .as_str()
        .ok_or_else(|| anyhow::anyhow!(NEEDS_FULL_TOKEN))
}

const NEEDS_FULL_TOKEN: &str = "the server shows no configuration digests to this token: apply needs an admin token or a full API token, not a read-only one";
