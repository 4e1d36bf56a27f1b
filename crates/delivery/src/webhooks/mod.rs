//! The Webhooks destination, in the shape every destination kind shares:
//! `config` (what the user writes), `request_builder` (delivery → request),
//! `service` (sends it), `sink` (drives the log, retries, dead letters).

pub mod config;
pub mod request_builder;
pub mod service;
pub mod sink;

pub use config::{Fanout, SignatureScheme, WebhooksConfig};
pub use sink::WebhooksSink;
