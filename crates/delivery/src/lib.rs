//! Delivery: destinations, signing, retry policy, circuit breakers and the
//! workers that move events from the log to receivers.
//!
//! Each destination runs on its own cursor and its own tasks, so a slow or
//! dead destination never delays another. This crate never parses incoming
//! HTTP requests; it reads the store and sends.

pub mod breaker;
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

/// The running destinations.
pub struct Engine {
    sinks: HashMap<String, Arc<Sink>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    shutdown: watch::Sender<bool>,
}

impl Engine {
    /// Starts a worker set for every enabled destination.
    pub async fn start(
        store: Arc<dyn Store>,
        destinations: Vec<DestinationSpec>,
    ) -> Result<Engine, String> {
        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut sinks = HashMap::new();
        let mut tasks = Vec::new();
        for spec in destinations {
            let name = spec.settings.name.clone();
            if sinks.contains_key(&name) {
                return Err(format!("destination {name:?} is declared twice"));
            }
            let sink = Sink::new(spec.settings, store.clone(), spec.transport).await?;
            tasks.extend(sink.spawn(shutdown_rx.clone()));
            sinks.insert(name, sink);
        }
        Ok(Engine {
            sinks,
            tasks,
            shutdown,
        })
    }

    pub fn sink(&self, name: &str) -> Option<&Arc<Sink>> {
        self.sinks.get(name)
    }

    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<_> = self.sinks.keys().cloned().collect();
        names.sort();
        names
    }

    /// Asks every worker to finish its round and stop, and waits for them.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}
