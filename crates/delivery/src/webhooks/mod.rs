//! The Webhooks destination, in the shape every destination kind shares:
//! `config` (what the user writes), `request_builder` (delivery → request),
//! `service` (sends it), `transport` (one attempt at a delivery, for the
//! shared [`crate::sink::Sink`] that drives the log, retries and dead letters).

pub mod config;
pub mod request_builder;
pub mod service;
pub mod transport;

pub use config::{Fanout, SignatureScheme, WebhooksConfig};
pub use transport::WebhooksTransport;
