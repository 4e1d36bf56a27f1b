//! Delivery: destinations, signing, retry policy, circuit breakers and the
//! workers that move events from the log to receivers.
//!
//! Each destination runs on its own cursor and its own tasks, so a slow or
//! dead destination never delays another. This crate never parses incoming
//! HTTP requests; it reads the store and sends.

pub mod breaker;
pub mod retry;
pub mod signing;
pub mod source_functions;
pub mod webhooks;

use std::collections::HashMap;
use std::sync::Arc;
use store::Store;
use tokio::sync::watch;

pub use webhooks::{WebhooksConfig, WebhooksSink};

/// Installs the process-wide TLS crypto provider (ring) once.
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// The running destinations.
pub struct Engine {
    sinks: HashMap<String, Arc<WebhooksSink>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    shutdown: watch::Sender<bool>,
}

impl Engine {
    /// Starts a worker set for every enabled destination.
    pub async fn start(
        store: Arc<dyn Store>,
        destinations: Vec<WebhooksConfig>,
    ) -> Result<Engine, String> {
        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut sinks = HashMap::new();
        let mut tasks = Vec::new();
        for config in destinations {
            let name = config.name.clone();
            if sinks.contains_key(&name) {
                return Err(format!("destination {name:?} is declared twice"));
            }
            let sink = WebhooksSink::new(config, store.clone()).await?;
            tasks.extend(sink.spawn(shutdown_rx.clone()));
            sinks.insert(name, sink);
        }
        Ok(Engine {
            sinks,
            tasks,
            shutdown,
        })
    }

    pub fn sink(&self, name: &str) -> Option<&Arc<WebhooksSink>> {
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
