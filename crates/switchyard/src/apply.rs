//! `switchyard apply`: reconciles a running server to a configuration file
//! through the API, idempotently, printing the plan first.

use crate::api_cli::{Client, Remote};
use crate::config::{Config, DestinationConfig};

use anyhow::Context;
use clap::Args;
use serde_json::{json, Value};
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// The configuration file to apply.
    #[arg(long, env = "SWITCHYARD_CONFIG", default_value = "switchyard.toml")]
    pub config: PathBuf,
    /// Print the plan and change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

enum Step {
    CreateSource { slug: String, body: Value },
    CreateDestination { name: String, body: Value },
    ChangeDestination { name: String, body: Value },
    RemoveDestination { name: String },
}

fn digest(v: &Value) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(v.to_string().as_bytes()))
}

pub async fn run(remote: Remote, args: ApplyArgs) -> anyhow::Result<()> {
    let config = Config::load(&args.config)?;
    let client = Client::new(&remote)?;
    use reqwest::Method;
    let sources = client
        .send(Method::GET, "/api/v1/sources", None)
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
        .send(Method::GET, "/api/v1/destinations", None)
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
    let mut notes = Vec::new();
    for s in &config.sources {
        if existing_sources.contains(&s.slug) {
            continue;
        }
        if s.kind == "tracking" {
            let mut body = json!({ "slug": s.slug });
            if let Some(k) = &s.write_key {
                body["write_key"] = Value::String(k.clone());
            }
            steps.push(Step::CreateSource {
                slug: s.slug.clone(),
                body,
            });
        } else {
            notes.push(format!("! source {:?} (function): code comes from files; it starts with the server's next start", s.slug));
        }
    }
    for (d, raw) in config.destinations.iter().zip(&config.raw_destinations) {
        let name = d.name().to_string();
        if let DestinationConfig::Function(_) = d {
            notes.push(format!("! destination {name:?} (function): code comes from files; applied at the server's next start"));
            continue;
        }
        if !existing_destinations.contains(&name) {
            steps.push(Step::CreateDestination {
                name,
                body: raw.clone(),
            });
            continue;
        }
        let current = client
            .send(Method::GET, &format!("/api/v1/destinations/{name}"), None)
            .await
            .with_context(|| format!("read destination {name:?}"))?;
        if current["digest"].as_str() != Some(digest(raw).as_str()) {
            steps.push(Step::ChangeDestination {
                name,
                body: raw.clone(),
            });
        }
    }
    let declared: Vec<&str> = config.destinations.iter().map(|d| d.name()).collect();
    for name in &existing_destinations {
        if !declared.contains(&name.as_str()) {
            steps.push(Step::RemoveDestination { name: name.clone() });
        }
    }

    println!("plan for {} ({}):", remote.server, args.config.display());
    if steps.is_empty() {
        println!("  no changes");
    }
    for step in &steps {
        match step {
            Step::CreateSource { slug, .. } => println!("  + create source {slug}"),
            Step::CreateDestination { name, .. } => println!("  + create destination {name}"),
            Step::ChangeDestination { name, .. } => println!("  ~ change destination {name}"),
            Step::RemoveDestination { name } => println!("  - remove destination {name}"),
        }
    }
    for n in &notes {
        println!("  {n}");
    }
    if args.dry_run || steps.is_empty() {
        return Ok(());
    }
    for step in steps {
        match step {
            Step::CreateSource { slug, body } => {
                let v = client
                    .send(Method::POST, "/api/v1/sources", Some(body.clone()))
                    .await
                    .with_context(|| format!("create source {slug:?}"))?;
                if body.get("write_key").is_none() {
                    println!(
                        "  source {slug}: write key {} (shown once)",
                        v["write_key"].as_str().unwrap_or("")
                    );
                }
            }
            Step::CreateDestination { name, body } => {
                client
                    .send(Method::POST, "/api/v1/destinations", Some(body.clone()))
                    .await
                    .with_context(|| format!("create destination {name:?}"))?;
            }
            Step::ChangeDestination { name, body } => {
                client
                    .send(
                        Method::PUT,
                        &format!("/api/v1/destinations/{name}"),
                        Some(body.clone()),
                    )
                    .await
                    .with_context(|| format!("change destination {name:?}"))?;
            }
            Step::RemoveDestination { name } => {
                client
                    .send(
                        Method::DELETE,
                        &format!("/api/v1/destinations/{name}"),
                        None,
                    )
                    .await
                    .with_context(|| format!("remove destination {name:?}"))?;
            }
        }
    }
    println!("applied");
    Ok(())
}
