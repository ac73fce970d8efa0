//! pretext: a self-hosted server that trains self-supervised vision models
//! and shows them live.
//!
//! Layers: [`web`] (HTTP, never touches tensors) → [`executor`] (queue and
//! metric writer) → [`train`] (Burn, on its own threads, never touches HTTP
//! or SQL). [`store`] holds all SQL.

pub mod config;
pub mod executor;
pub mod live;
pub mod methods;
pub mod metrics;
pub mod server;
pub mod store;
pub mod train;
pub mod web;
