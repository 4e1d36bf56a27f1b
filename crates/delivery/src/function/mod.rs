//! The destination-function kind, in the shape every destination kind shares:
//! `config` (what the user writes) and `transport` (one attempt at a delivery
//! for the shared [`crate::sink::Sink`]). The request building and sending
//! happen inside the user's JavaScript.

pub mod config;
pub mod transport;

pub use config::FunctionDestinationConfig;
pub use transport::FunctionTransport;
