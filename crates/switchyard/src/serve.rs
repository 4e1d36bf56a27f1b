//! `switchyard serve`: opens the store, applies the configuration, starts the
//! delivery workers and the HTTP server, and shuts down gracefully.

use crate::config::{Config, DestinationConfig};
use anyhow::{anyhow, bail, Context};
use clap::Args;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use spec::Limits;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use store::secrets::{generate_credential, Keyring};
use store::{EmbeddedOptions, EmbeddedStore, SourceRecord, Store};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Configuration file (default: ./switchyard.toml when present).
    #[arg(long, env = "SWITCHYARD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "SWITCHYARD_LISTEN")]
    pub listen: Option<String>,
    /// Data directory of the embedded store [default: ./switchyard-data].
    #[arg(long, env = "SWITCHYARD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Store URL: nats://… for the scale-out backend (not available yet).
    #[arg(long, env = "SWITCHYARD_STORE")]
    pub store: Option<String>,
    /// fsync every group commit [default: true].
    #[arg(long, env = "SWITCHYARD_FSYNC")]
    pub fsync: Option<bool>,
    /// Window in which duplicate messageIds are stored once [default: 24h].
    #[arg(long, env = "SWITCHYARD_DEDUP_WINDOW")]
    pub dedup_window: Option<String>,
    /// Most message ids remembered for deduplication, 56–112 bytes of memory each [default: 2000000].
    #[arg(long, env = "SWITCHYARD_DEDUP_MAX_IDS")]
    pub dedup_max_ids: Option<usize>,
    /// How long delivered events, attempts and finished raw requests are kept [default: 7d].
    #[arg(long, env = "SWITCHYARD_RETENTION")]
    pub retention: Option<String>,
    /// Largest message in bytes [default: 32768].
    #[arg(long, env = "SWITCHYARD_MAX_MESSAGE_BYTES")]
    pub max_message_bytes: Option<usize>,
    /// Largest request body in bytes, after decompression [default: 512000].
    #[arg(long, env = "SWITCHYARD_MAX_BATCH_BYTES")]
    pub max_batch_bytes: Option<usize>,
    /// Most messages per batch request [default: 2500].
    #[arg(long, env = "SWITCHYARD_MAX_BATCH_EVENTS")]
    pub max_batch_events: Option<usize>,
    /// How long a client may take to send a request's headers, and its body once it stalls; an idle keep-alive connection is closed after as long [default: 60s].
    #[arg(long, env = "SWITCHYARD_CLIENT_TIMEOUT")]
    pub client_timeout: Option<String>,
    /// Threads running functions [default: one per core].
    #[arg(long, env = "SWITCHYARD_FUNCTION_WORKERS")]
    pub function_workers: Option<usize>,
    /// Largest raw request a function source accepts, in bytes [default: 2097152].
    #[arg(long, env = "SWITCHYARD_MAX_FUNCTION_BODY_BYTES")]
    pub max_function_body_bytes: Option<usize>,
    /// Delay before a failed source-function run is retried, doubling each time [default: 1000].
    #[arg(long, env = "SWITCHYARD_FUNCTION_RETRY_INITIAL_MS")]
    pub function_retry_initial_ms: Option<u64>,
    /// Hosts functions may `fetch` even when private or loopback, comma-separated (replaces the file's list).
    #[arg(long, env = "SWITCHYARD_FETCH_ALLOW", value_delimiter = ',')]
    pub fetch_allow: Vec<String>,
    /// Hosts functions may never `fetch`, comma-separated (replaces the file's list).
    #[arg(long, env = "SWITCHYARD_FETCH_DENY", value_delimiter = ',')]
    pub fetch_deny: Vec<String>,
    /// Log format: text or json [default: text].
    #[arg(long, env = "SWITCHYARD_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Sets the admin token (otherwise one is generated on first start and printed once).
    #[arg(long, env = "SWITCHYARD_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Master key, 64 hex digits (otherwise `master.key` in the data directory).
    #[arg(long, env = "SWITCHYARD_MASTER_KEY", hide_env_values = true)]
    pub master_key: Option<String>,
}

fn init_logging(format: &str) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SWITCHYARD_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let result = match format {
        "json" => builder.json().try_init(),
        "text" => builder.try_init(),
        other => bail!("unknown log format {other:?} (expected text or json)"),
    };
    result.map_err(|e| anyhow!("cannot start logging: {e}"))
}

fn install_metrics() -> anyhow::Result<metrics_exporter_prometheus::PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Suffix("_seconds".to_string()),
            &[
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                60.0, 300.0, 3600.0,
            ],
        )
        .context("metrics buckets")?
        .install_recorder()
        .context("cannot install the metrics recorder")?;
    // A histogram's samples wait in the recorder until they are folded into
    // its buckets, which only a scrape of /metrics or an upkeep does: without
    // this a server nobody scrapes keeps every delivery's latency in memory.
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

/// A duration setting: its flag (or environment variable), else the file's
/// `[server]` value, else `default`.
fn duration_setting(
    name: &str,
    flag: &Option<String>,
    file: &Option<String>,
    default: Duration,
) -> anyhow::Result<Duration> {
    match flag.as_ref().or(file.as_ref()) {
        Some(text) => delivery::retry::parse_duration(text).map_err(|e| anyhow!("{name}: {e}")),
        None => Ok(default),
    }
}

/// Every client holds a connection open (a browser running analytics.js,
/// an SDK's keep-alive pool), and each one is a file descriptor: the usual
/// soft limit of 1,024 would stop the server accepting at about a thousand
/// clients while the hard limit allows far more. Raises the soft limit to
/// the hard one (at most 2^20, the kernel's usual `nr_open`) and returns
/// the limit in effect.
fn raise_open_files_limit() -> libc::rlim_t {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 0;
    }
    let wanted = limit.rlim_max.min(1 << 20);
    if limit.rlim_cur < wanted {
        let raised = libc::rlimit {
            rlim_cur: wanted,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return wanted;
        }
    }
    limit.rlim_cur
}

/// Refuses to start with another master key than the data directory was
/// made with: its write keys, tokens and secrets would all stop working,
/// with no word why. The first start records a digest of the key.
async fn check_master_key(store: &dyn Store, keyring: &Keyring) -> anyhow::Result<()> {
    const KEY: &str = "master_key_check";
    let digest = keyring.hash("switchyard master key check");
    match store.get_meta(KEY).await? {
        Some(stored) if stored != digest => anyhow::bail!(
            "this data directory was made with another master key: its write keys, tokens and \
             secrets need that one. Start with the same --master-key (or SWITCHYARD_MASTER_KEY), \
             or put its master.key back in the data directory"
        ),
        Some(_) => Ok(()),
        None => Ok(store.put_meta(KEY, &digest).await?),
    }
}

/// Credential digests to serve: (slug, digest).
struct Credentials {
    write_keys: Vec<(String, String)>,
    function_tokens: Vec<(String, String)>,
}

/// Registers the configured sources; creates the default one on a first start
/// with nothing configured. Returns the credential digests to serve.
async fn apply_sources(
    store: &dyn Store,
    keyring: &Keyring,
    config: &Config,
    listen: &str,
) -> anyhow::Result<Credentials> {
    let existing: HashMap<String, SourceRecord> = store
        .sources()
        .await?
        .into_iter()
        .map(|s| (s.slug.clone(), s))
        .collect();
    let mut wanted = config.sources.clone();
    if wanted.is_empty() && existing.is_empty() {
        wanted.push(crate::config::SourceConfig {
            slug: "default".into(),
            kind: "tracking".into(),
            write_key: None,
            function: None,
            token: None,
            settings: Default::default(),
            respond: None,
            capture: None,
        });
    }
    // A key the file gives may not be another source's (one made through the
    // API): its events would silently change source.
    for s in &wanted {
        let Some(key) = &s.write_key else { continue };
        let digest = keyring.hash(key);
        if let Some(other) = existing
            .values()
            .find(|o| o.slug != s.slug && o.write_key_hash.as_deref() == Some(digest.as_str()))
        {
            if !wanted
                .iter()
                .any(|w| w.slug == other.slug && w.write_key.is_some())
            {
                anyhow::bail!(
                    "source {:?}: its `write_key` is already the write key of source {:?}; each source needs its own",
                    s.slug,
                    other.slug
                );
            }
        }
    }
    let now = chrono::Utc::now().timestamp_millis();
    for s in &wanted {
        let previous = existing.get(&s.slug);
        let (token_hash, generated_token) = match &s.token {
            Some(t) => (Some(keyring.hash(t)), None),
            None if s.kind != "function" => (None, None),
            None if previous.and_then(|p| p.token_hash.clone()).is_some() => (None, None),
            None => {
                let token = generate_credential("tok_");
                (Some(keyring.hash(&token)), Some(token))
            }
        };
        let (hash, generated) = match &s.write_key {
            Some(k) => (Some(keyring.hash(k)), None),
            None if previous.and_then(|p| p.write_key_hash.clone()).is_some() => (None, None),
            None if s.kind == "tracking" => {
                let key = generate_credential("wk_");
                (Some(keyring.hash(&key)), Some(key))
            }
            None => (None, None),
        };
        store
            .put_source(SourceRecord {
                slug: s.slug.clone(),
                kind: s.kind.clone(),
                write_key_hash: hash,
                token_hash,
                created_ms: now,
                config: (s.kind == "function").then(|| {
                    let mut binding = serde_json::json!({
                        "function": s.function,
                        "settings": crate::config::toml_to_json(&toml::Value::Table(s.settings.clone().into_iter().collect())),
                        "respond": s.respond.clone().unwrap_or_else(|| "ack".into()),
                        "capture": s.capture.clone().unwrap_or_else(|| "always".into()),
                    });
                    // Settings are encrypted at rest with the master key.
                    keyring.seal_config(&mut binding);
                    binding.to_string()
                }),
            })
            .await?;
        if let Some(key) = generated {
            println!("switchyard: created source {:?}", s.slug);
            println!("  write key: {key}   (shown once; only its digest is stored)");
            println!("  send an event:");
            println!(
                "    curl -u {key}: http://{listen}/v1/track -H 'Content-Type: application/json' -d '{{\"userId\":\"u1\",\"event\":\"Hello\"}}'"
            );
            println!("  or point a Segment SDK at host http://{listen} with this write key");
        }
        if let Some(token) = generated_token {
            println!("switchyard: function source {:?}", s.slug);
            println!("  token: {token}   (shown once; only its digest is stored)");
            println!(
                "  webhook URL: http://{listen}/functions/{}/{token}",
                s.slug
            );
        }
    }
    let sources = store.sources().await?;
    Ok(Credentials {
        write_keys: sources
            .iter()
            .filter_map(|s| s.write_key_hash.clone().map(|h| (s.slug.clone(), h)))
            .collect(),
        function_tokens: sources
            .iter()
            .filter(|s| s.kind == "function")
            .filter_map(|s| s.token_hash.clone().map(|h| (s.slug.clone(), h)))
            .collect(),
    })
}

/// Loads the code of every function source and checks that it loads.
/// Saves every `[[functions]]` file as the function's next version (a no-op
/// when unchanged) and deploys it: at start the file is the truth.
async fn apply_file_functions(
    store: &dyn Store,
    config: &Config,
    config_dir: &std::path::Path,
) -> anyhow::Result<()> {
    for f in &config.functions {
        let path = if f.file.is_absolute() {
            f.file.clone()
        } else {
            config_dir.join(&f.file)
        };
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("function {:?}: cannot read {}", f.name, path.display()))?;
        let spec = f.spec();
        // A file that does not load is not deployed: what ran before goes on
        // running (a source with nothing to run waits, visibly), and the
        // rest of the server starts.
        if let Err(e) =
            delivery::catalog::LoadedFunction::check(&f.name, &f.kind, 0, &text, spec.clone())
        {
            tracing::error!(function = %f.name, file = %path.display(), error = %e, "function not deployed: its file does not load");
            eprintln!(
                "switchyard: function {:?} ({}) not deployed: {e}",
                f.name,
                path.display()
            );
            continue;
        }
        let version = store
            .save_function(&f.name, &f.kind, &text, &serde_json::to_string(&spec)?)
            .await?;
        store.deploy_function(&f.name, version).await?;
    }
    Ok(())
}

/// Every function source in the store, put together. A source whose
/// function cannot run (it does not load, or the source's settings do not fit
/// it) does not stop the start: it is marked failed with the reason, and its
/// requests wait until a deploy or a settings change lets it run.
async fn load_source_functions(
    store: &dyn Store,
    keyring: &Keyring,
) -> anyhow::Result<Vec<delivery::source_functions::SourceFunction>> {
    let mut out = Vec::new();
    for s in store.sources().await? {
        let (true, Some(config)) = (s.kind == "function", s.config.as_deref()) else {
            continue;
        };
        let binding = serde_json::from_str::<serde_json::Value>(config)
            .map_err(|e| format!("stored configuration is unreadable: {e}"))
            .and_then(|mut stored| keyring.open_config(&mut stored).map(|_| stored))
            .and_then(|stored| {
                serde_json::from_value::<delivery::catalog::SourceBinding>(stored)
                    .map_err(|e| format!("stored configuration is unreadable: {e}"))
            });
        let binding = match binding {
            Ok(b) => b,
            Err(e) => {
                // Without its binding the source cannot even name its
                // function; it still keeps (and takes) its requests.
                tracing::error!(source = %s.slug, error = %e, "source function cannot start: its requests wait");
                let unknown = delivery::catalog::SourceBinding {
                    function: String::new(),
                    settings: serde_json::Value::Null,
                    respond: None,
                    capture: None,
                };
                out.push(delivery::catalog::unavailable_source(&s.slug, &unknown, e));
                continue;
            }
        };
        match delivery::catalog::source_function(store, &s.slug, &binding).await {
            Ok(f) => out.push(f),
            Err(e) => {
                tracing::error!(source = %s.slug, function = %binding.function, error = %e,
                    "source function cannot start: its requests wait until a deploy or a settings change lets it run");
                eprintln!("switchyard: source {:?} not started: {e}", s.slug);
                out.push(delivery::catalog::unavailable_source(&s.slug, &binding, e));
            }
        }
    }
    Ok(out)
}

/// Applies the file's destinations to the store (the file wins for the names
/// it declares; file-declared destinations no longer in it are removed;
/// destinations created through the API are kept) and returns every stored one.
async fn reconcile_destinations(
    store: &dyn Store,
    keyring: &Keyring,
    config: &Config,
) -> anyhow::Result<Vec<DestinationConfig>> {
    let declared: Vec<String> = config
        .destinations
        .iter()
        .map(|d| d.name().to_string())
        .collect();
    for (d, raw) in config.destinations.iter().zip(&config.raw_destinations) {
        // Secrets (shared secrets, settings) are encrypted at rest.
        let mut sealed = raw.clone();
        keyring.seal_config(&mut sealed);
        store
            .put_destination(d.name(), &sealed.to_string(), "file")
            .await?;
    }
    let mut out = Vec::new();
    for (name, json, origin) in store.destinations().await? {
        if origin == "file" && !declared.contains(&name) {
            store.delete_destination(&name).await?;
            tracing::info!(destination = %name, "destination removed from the configuration file: stopped");
            continue;
        }
        let parsed = serde_json::from_str::<serde_json::Value>(&json)
            .map_err(|e| e.to_string())
            .and_then(|mut v| keyring.open_config(&mut v).map(|_| v))
            .and_then(|v| {
                serde_json::from_value::<DestinationConfig>(v).map_err(|e| e.to_string())
            });
        match parsed {
            Ok(d) => out.push(d),
            Err(e) => {
                tracing::error!(destination = %name, error = %e, "stored destination is invalid: not started")
            }
        }
    }
    Ok(out)
}

async fn build_destinations(
    destinations: &[DestinationConfig],
    store: &Arc<dyn Store>,
    pool: Option<&Arc<functions::Pool>>,
) -> anyhow::Result<Vec<delivery::DestinationSpec>> {
    let mut out = Vec::new();
    for d in destinations {
        if let DestinationConfig::Webhooks(w) = d {
            reenable_changed_urls(store.as_ref(), w).await?;
        }
        // One destination that cannot run does not stop the others: its
        // cursor stays where it is, and a deploy that fixes its function
        // starts it from there.
        match delivery::catalog::destination(store, pool, d).await {
            Ok(spec) => out.push(spec),
            Err(e) => {
                tracing::error!(destination = %d.name(), error = %e, "destination not started: its events wait behind its cursor");
                eprintln!("switchyard: destination {:?} not started: {e}", d.name());
            }
        }
    }
    Ok(out)
}

async fn apply_admin_token(
    store: &dyn Store,
    keyring: &Keyring,
    given: Option<&str>,
) -> anyhow::Result<String> {
    if let Some(token) = given {
        let hash = keyring.hash(token);
        store.put_meta("admin_token_hash", &hash).await?;
        return Ok(hash);
    }
    if let Some(hash) = store.get_meta("admin_token_hash").await? {
        return Ok(hash);
    }
    let token = generate_credential("sya_");
    let hash = keyring.hash(&token);
    store.put_meta("admin_token_hash", &hash).await?;
    println!("switchyard: admin token: {token}   (shown once; for /api/v1/…)");
    Ok(hash)
}

/// Switches disabled URLs back on when a destination's URL list changed.
async fn reenable_changed_urls(
    store: &dyn Store,
    w: &delivery::WebhooksConfig,
) -> anyhow::Result<()> {
    let key = format!("destination_urls:{}", w.name);
    let fingerprint = w.urls.join("\n");
    if store.get_meta(&key).await?.as_deref() != Some(fingerprint.as_str()) {
        store.enable_urls(&w.name, None).await?;
        store.put_meta(&key, &fingerprint).await?;
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    tracing::info!("shutting down: finishing in-flight requests and deliveries");
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let config_path = match &args.config {
        Some(p) => Some(p.clone()),
        None => {
            let default = PathBuf::from("switchyard.toml");
            default.exists().then_some(default)
        }
    };
    let config = match &config_path {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    let server = &config.server;
    let log_format = args
        .log_format
        .clone()
        .or(server.log_format.clone())
        .unwrap_or_else(|| "text".into());
    init_logging(&log_format)?;
    let listen = args
        .listen
        .clone()
        .or(server.listen.clone())
        .unwrap_or_else(|| "127.0.0.1:8080".into());
    let data_dir = args
        .data_dir
        .clone()
        .or(server.data_dir.clone())
        .unwrap_or_else(|| PathBuf::from("./switchyard-data"));
    if let Some(url) = args.store.clone().or(server.store.clone()) {
        bail!("store {url:?}: the NATS JetStream backend is not available in this build yet; remove `store` to use the embedded store");
    }
    let dedup_window = duration_setting(
        "dedup_window",
        &args.dedup_window,
        &server.dedup_window,
        Duration::from_secs(24 * 3600),
    )?;
    let retention = duration_setting(
        "retention",
        &args.retention,
        &server.retention,
        Duration::from_secs(7 * 24 * 3600),
    )?;
    let client_timeout = duration_setting(
        "client_timeout",
        &args.client_timeout,
        &server.client_timeout,
        server::listen::DEFAULT_CLIENT_TIMEOUT,
    )?;
    if client_timeout.is_zero() {
        bail!("client_timeout: must be longer than 0 s");
    }
    let defaults = Limits::default();
    let limits = Limits {
        max_message_bytes: args
            .max_message_bytes
            .or(server.max_message_bytes)
            .unwrap_or(defaults.max_message_bytes),
        max_batch_bytes: args
            .max_batch_bytes
            .or(server.max_batch_bytes)
            .unwrap_or(defaults.max_batch_bytes),
        max_batch_events: args
            .max_batch_events
            .or(server.max_batch_events)
            .unwrap_or(defaults.max_batch_events),
        max_message_id_chars: defaults.max_message_id_chars,
    };
    let mut options = EmbeddedOptions::new(&data_dir);
    options.fsync = args.fsync.or(server.fsync).unwrap_or(true);
    options.dedup_window_ms = dedup_window.as_millis() as i64;
    if let Some(max) = args.dedup_max_ids.or(server.dedup_max_ids) {
        options.dedup_max_ids = max;
    }
    let embedded = EmbeddedStore::open(options)
        .with_context(|| format!("cannot open the store in {}", data_dir.display()))?;
    // Opening a large store frees tens of megabytes on this thread (the
    // buffers the deduplication table's rebuild grew out of); the allocator
    // would keep them resident until this thread allocates again, which a
    // serving process's main thread seldom does.
    // SAFETY: mi_collect only returns the calling thread's free memory.
    unsafe { libmimalloc_sys::mi_collect(true) };
    let store: Arc<dyn Store> = Arc::new(embedded);
    let key_file = data_dir.join("master.key");
    let had_key_file = key_file.exists();
    let keyring = Keyring::load(&data_dir, args.master_key.as_deref()).map_err(|e| anyhow!(e))?;
    if let Err(e) = check_master_key(store.as_ref(), &keyring).await {
        // A key file this start just made for the wrong key goes again.
        if !had_key_file && args.master_key.is_none() {
            let _ = std::fs::remove_file(&key_file);
        }
        return Err(e);
    }

    let config_dir = config_path
        .as_ref()
        .and_then(|p| p.parent().map(|d| d.to_path_buf()))
        .unwrap_or_else(|| PathBuf::from("."));
    apply_file_functions(store.as_ref(), &config, &config_dir).await?;
    let credentials = apply_sources(store.as_ref(), &keyring, &config, &listen).await?;
    let source_functions = load_source_functions(store.as_ref(), &keyring).await?;
    let admin_hash =
        apply_admin_token(store.as_ref(), &keyring, args.admin_token.as_deref()).await?;
    let metrics = install_metrics()?;
    // Functions can be created at run time: the pool is always there (its
    // threads are idle until a function runs).
    let workers = args
        .function_workers
        .or(server.function_workers)
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        });
    let hosts =
        |flag: &Vec<String>, file: &Vec<String>| if flag.is_empty() { file } else { flag }.clone();
    let fetch_policy = functions::FetchPolicy {
        allow: hosts(&args.fetch_allow, &server.fetch_allow),
        deny: hosts(&args.fetch_deny, &server.fetch_deny),
    };
    let pool = Arc::new(functions::Pool::new(workers, fetch_policy.clone()));
    let stored_destinations = reconcile_destinations(store.as_ref(), &keyring, &config).await?;
    let destinations = build_destinations(&stored_destinations, &store, Some(&pool)).await?;
    let engine = delivery::Engine::start(store.clone(), destinations)
        .await
        .map_err(|e| anyhow!(e))?;
    let (workers_stop, workers_stop_rx) = tokio::sync::watch::channel(false);
    let runner = Some(delivery::source_functions::SourceRunner::new(
        store.clone(),
        pool.clone(),
        source_functions,
        limits,
        Duration::from_millis(
            args.function_retry_initial_ms
                .or(server.function_retry_initial_ms)
                .unwrap_or(1000),
        ),
    ));
    if let Some(r) = &runner {
        r.restore_pauses().await;
    }
    let runner_task = runner
        .clone()
        .map(|r| tokio::spawn(r.run(workers_stop_rx.clone())));
    let mut app = server::AppState::new(
        store.clone(),
        limits,
        keyring,
        engine.clone(),
        Some(metrics),
    );
    app.runner = runner.clone();
    if let Some(max) = args
        .max_function_body_bytes
        .or(server.max_function_body_bytes)
    {
        app.max_function_body_bytes = max;
    }
    app.fetch_policy = fetch_policy;
    let state = Arc::new(app);
    for (slug, hash) in &credentials.write_keys {
        state.set_write_key_hash(slug, hash);
    }
    for (slug, hash) in &credentials.function_tokens {
        state.set_function_token_hash(slug, hash);
    }
    for token in store.tokens().await? {
        state.set_api_token(&token.hash, Some(token.read_only));
    }
    state.set_admin_token_hash(Some(admin_hash));
    server::manage::resume_deletions(&state).await;

    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let local = listener.local_addr()?;
    let open_files = raise_open_files_limit();
    tracing::info!(
        address = %local,
        open_files,
        data_dir = %data_dir.display(),
        config = %config_path.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "none".into()),
        sources = credentials.write_keys.len() + credentials.function_tokens.len(),
        destinations = engine.names().await.len(),
        "switchyard listening"
    );
    println!("switchyard: listening on http://{local}");

    let compactor = {
        let store = store.clone();
        let engine = engine.clone();
        // Often enough that nothing outlives the retention by much.
        let every = (retention / 4).clamp(Duration::from_secs(1), Duration::from_secs(3600));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                // Configured destinations that are not running (one whose
                // function cannot start) keep their events too.
                let mut destinations = engine.names().await;
                match store.destinations().await {
                    Ok(configured) => {
                        destinations.extend(configured.into_iter().map(|(name, _, _)| name))
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "compaction skipped: cannot list destinations");
                        continue;
                    }
                }
                destinations.sort();
                destinations.dedup();
                match store
                    .compact(
                        chrono::Utc::now().timestamp_millis(),
                        retention.as_millis() as i64,
                        &destinations,
                    )
                    .await
                {
                    Ok(r) => tracing::debug!(
                        events = r.events,
                        attempts = r.attempts,
                        raw_requests = r.raw_requests,
                        "compacted"
                    ),
                    Err(e) => tracing::warn!(error = %e, "compaction failed"),
                }
            }
        })
    };
    server::listen::serve(listener, server::router(state.clone()), client_timeout, {
        let state = state.clone();
        async move {
            shutdown_signal().await;
            state.begin_shutdown();
        }
    })
    .await
    .context("HTTP server failed")?;
    compactor.abort();
    let _ = workers_stop.send(true);
    if let Some(task) = runner_task {
        let _ = task.await;
    }
    engine.shutdown().await;
    let _ = tokio::task::spawn_blocking(move || pool.shutdown()).await;
    store.close().await;
    tracing::info!("stopped");
    Ok(())
}
