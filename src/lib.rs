//! entra-gateway: an authentication token-exchange gateway for Microsoft Entra ID.
//!
//! A frontend sends the Entra access token it got from MSAL to `POST /auth/exchange`; the
//! gateway validates it, checks group membership, syncs the user and returns its own short-lived
//! JWT. Every other request is reverse-proxied with that JWT verified and identity headers set.
//!
//! # Layout
//! - [`config`]: YAML + `ENTRA_GATEWAY__*` overrides -> validated [`config::Config`]; secrets redacted.
//! - [`entra`]: Entra access-token validation; [`entra::jwks`] fetches and caches tenant keys.
//! - [`graph`]: Microsoft Graph client (app-only and OBO tokens, group lookups, profile, photo).
//! - [`policy`]: pure group -> allow/deny and roles decision.
//! - [`directory`]: user records and the stable internal user id.
//! - [`issuer`]: the internal JWT (mint, verify, JWKS, discovery); [`issuer::keys`] the key ring.
//! - [`cache`]: in-process TTL caches with single-flight loading.
//! - [`exchange`]: the token-exchange steps, from Entra token to internal token.
//! - [`access`]: the internal-token check on the hot path (verified-token cache, revocation,
//!   route groups); [`revocation`] the logout store.
//! - [`proxy`]: the reverse proxy; [`proxy::routes`] the route table, [`proxy::headers`] the
//!   strip-then-set header rules shared with forward-auth.
//! - [`http`]: routing and the one place errors become responses; one file per endpoint.
//! - [`metrics`]: Prometheus families with bounded labels.
//! - [`server`]: wiring, listeners, background tasks, graceful shutdown; [`tls`] the listener
//!   certificate and outbound roots; [`reload`] live config and certificate reload;
//!   [`ratelimit`] the exchange's token buckets.
//! - [`cli`]: `serve`, `check-config`, `demo`, `keys generate`.
//! - [`mock`]: loopback mock of Entra ID + Graph for tests and the demo; [`demo`] the demo stack.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod access;
pub mod app;
pub mod body;
pub mod cache;
pub mod cli;
pub mod clock;
pub mod config;
pub mod demo;
pub mod directory;
pub mod entra;
pub mod exchange;
pub mod forwarded;
pub mod graph;
pub mod http;
pub mod identity;
pub mod issuer;
pub mod keys;
pub mod metrics;
pub mod mock;
pub mod outbound;
pub mod path;
pub mod policy;
pub mod proxy;
pub mod ratelimit;
pub mod reload;
pub mod revocation;
pub mod server;
pub mod tls;
