//! entra-gateway: an authentication token-exchange gateway for Microsoft Entra ID.
//!
//! A frontend sends the Entra access token it got from MSAL to `POST /auth/exchange`; the
//! gateway validates it, checks group membership, syncs the user and returns its own short-lived
//! JWT. Every other request is reverse-proxied with that JWT verified and identity headers set.
//!
//! # Layout (dependencies point down; ARCHITECTURE.md has the flows)
//! - Leaves: [`clock`] (Unix time), `body` (the response body type), `byte_class` (byte checks
//!   written to be vectorised), [`path`] (the canonical request path), [`keys`] (signing keys),
//!   `header_names` (names with `_` read as `-`), `identity` (identity header names, spoof
//!   stripping), `forwarded` (trusted proxies, `X-Forwarded-*`), `outbound` (error chains),
//!   [`tls`] (certificates), `request_id`, `logging` (subscriber and its writer thread),
//!   `cors` (browser origins), `metrics` (Prometheus families), [`seal`] (the HMAC that makes
//!   every value shared through Redis tamper-evident).
//! - [`config`]: YAML + `ENTRA_GATEWAY__*` overrides -> raw form -> typed [`config::Config`]
//!   with every value parsed and every file loaded; secrets redacted.
//! - Domain: `telemetry` (OpenTelemetry: exporter, W3C trace context, spans), `cache`
//!   (in-process and Redis), `directory` (user records: in process, Redis or
//!   PostgreSQL), `revocation`
//!   (logout), `issuer` (the internal JWT), `assertion` (per-route tokens for upstreams), `entra` (Entra token rules and JWKS), `graph`
//!   (Microsoft Graph), `policy` (groups -> allow/roles, app callers), `exchange` (the exchange
//!   steps), `access` (the hot-path token check), `ratelimit`, [`proxy`] (routes, forwarding).
//! - `app`: the state handlers share, built from the config; `http`: routing and the one
//!   classification of failures; `reload`: live config and certificate reload.
//! - [`server`]: listeners, background tasks, connections, graceful shutdown.
//! - [`cli`]: `serve`, `check-config`, `demo`, `keys generate`; `demo` and `mock` (the
//!   loopback Entra ID + Graph) exist with the default `demo` feature.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub(crate) mod access;
pub(crate) mod app;
pub(crate) mod assertion;
pub(crate) mod body;
pub(crate) mod byte_class;
pub(crate) mod cache;
pub mod cli;
pub mod clock;
pub mod config;
pub(crate) mod cors;
#[cfg(feature = "demo")]
pub mod demo;
pub(crate) mod directory;
pub(crate) mod entra;
pub(crate) mod exchange;
pub(crate) mod forwarded;
pub(crate) mod graph;
pub(crate) mod header_names;
pub(crate) mod http;
pub(crate) mod identity;
pub(crate) mod issuer;
pub mod keys;
pub(crate) mod logging;
pub mod metrics;
#[cfg(feature = "demo")]
pub mod mock;
pub(crate) mod outbound;
pub mod path;
pub(crate) mod policy;
pub mod proxy;
pub(crate) mod ratelimit;
pub(crate) mod reload;
pub(crate) mod request_id;
pub(crate) mod revocation;
pub mod seal;
pub mod server;
pub(crate) mod sync;
pub(crate) mod telemetry;
pub mod tls;
pub(crate) mod user_access;
