//! Delivery: destinations, signing, retry policy, circuit breakers and the
//! workers that move events from the log to receivers.
//!
//! Each destination runs on its own cursor and its own tasks, so a slow or
//! dead destination never delays another. This crate never parses incoming
//! HTTP requests; it reads the store and sends.

pub mod breaker;
pub mod catalog;
pub mod filter;
pub mod function;
pub mod retry;
pub mod signing;
pub mod sink;
pub mod source_functions;
pub mod webhooks;

use std::collections::HashMap;
use std::sync::Arc;
use store::Store;
use tokio::sync::watch;

pub use function::{FunctionDestinationConfig, FunctionTransport};
pub use sink::{Sink, SinkSettings, Transport};
pub use webhooks::{WebhooksConfig, WebhooksTransport};

/// A destination ready to start: its settings and its transport.
pub struct DestinationSpec {
    pub settings: SinkSettings,
    pub transport: Arc<dyn Transport>,
}

impl DestinationSpec {
    /// A Webhooks destination.
    pub async fn webhooks(config: WebhooksConfig, store: Arc<dyn Store>) -> Result<Self, String> {
        let settings = SinkSettings {
            name: config.name.clone(),
            sources: config.sources.clone(),
            batch_size: config.batch_size,
            batch_max_wait_ms: config.batch_max_wait_ms,
            concurrency: config.concurrency,
            enabled: config.enabled,
            filter: config.filter.clone(),
        };
        let transport = Arc::new(WebhooksTransport::new(config, store).await?);
        Ok(DestinationSpec {
            settings,
            transport,
        })
    }
}

/// Installs the process-wide TLS crypto provider (ring) once.
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A destination as written in `switchyard.toml` or sent to the API.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum DestinationConfig {
    Webhooks(WebhooksConfig),
    Function(FunctionDestinationConfig),
}

impl DestinationConfig {
    pub fn name(&self) -> &str {
        match self {
            DestinationConfig::Webhooks(w) => &w.name,
            DestinationConfig::Function(f) => &f.name,
        }
    }

    pub fn sources(&self) -> &[String] {
        match self {
            DestinationConfig::Webhooks(w) => &w.sources,
            DestinationConfig::Function(f) => &f.sources,
        }
    }
}

struct Running {
    sink: Arc<Sink>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    stop: watch::Sender<bool>,
}

/// The running destinations; destinations can be added, replaced and removed
/// while the server runs.
pub struct Engine {
    store: Arc<dyn Store>,
    running: tokio::sync::RwLock<HashMap<String, Running>>,
}

impl Engine {
    /// Starts a worker set for every destination.
    pub async fn start(
        store: Arc<dyn Store>,
        destinations: Vec<DestinationSpec>,
    ) -> Result<Arc<Engine>, String> {
        let engine = Arc::new(Engine {
            store,
            running: tokio::sync::RwLock::new(HashMap::new()),
        });
        for spec in destinations {
            engine.add(spec).await?;
        }
        Ok(engine)
    }

    /// Starts a new destination; its cursor starts at the head of the log.
    pub async fn add(&self, spec: DestinationSpec) -> Result<(), String> {
        let name = spec.settings.name.clone();
        let mut running = self.running.write().await;
        if running.contains_key(&name) {
            return Err(format!("destination {name:?} exists"));
        }
        let sink = Sink::new(spec.settings, self.store.clone(), spec.transport).await?;
        let (stop, stop_rx) = watch::channel(false);
        let tasks = sink.spawn(stop_rx);
        running.insert(name, Running { sink, tasks, stop });
        Ok(())
    }

    /// Stops a destination after its round in progress. Its cursor, retries
    /// and dead letters stay in the store (a destination added again under the
    /// same name resumes where it stopped).
    pub async fn remove(&self, name: &str) -> bool {
        let removed = self.running.write().await.remove(name);
        match removed {
            Some(r) => {
                let _ = r.stop.send(true);
                for t in r.tasks {
                    let _ = t.await;
                }
                true
            }
            None => false,
        }
    }

    /// Replaces a destination's configuration (stop, then start again).
    pub async fn replace(&self, spec: DestinationSpec) -> Result<(), String> {
        self.remove(&spec.settings.name).await;
        self.add(spec).await
    }

    pub async fn sink(&self, name: &str) -> Option<Arc<Sink>> {
        self.running.read().await.get(name).map(|r| r.sink.clone())
    }

    pub async fn names(&self) -> Vec<String> {
        let mut names: Vec<_> = self.running.read().await.keys().cloned().collect();
        names.sort();
        names
    }

    /// Asks every worker to finish its round and stop, and waits for them.
    pub async fn shutdown(&self) {
        let all: Vec<Running> = self.running.write().await.drain().map(|(_, r)| r).collect();
        for r in &all {
            let _ = r.stop.send(true);
        }
        for r in all {
            for t in r.tasks {
                let _ = t.await;
            }
        }
    }
}
