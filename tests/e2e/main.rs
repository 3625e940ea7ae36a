//! The end-to-end tests: real sockets, a real gateway (in process or as the real binary), real
//! upstreams, Redis, nginx and Helm; only Entra ID and Graph are the loopback mock. One test
//! binary, so that the shared helpers in `tests/support/` are compiled once.
//!
//! Run one area with a filter, e.g. `cargo test --test e2e trust_boundary`.

#[path = "../support/mod.rs"]
mod support;

mod cli;
mod connections;
mod continuous_access;
mod cors;
mod credentials;
mod demo;
mod docs;
mod entra_rules;
mod exchange;
mod helm;
mod ingresses;
mod nginx;
mod observability;
mod ops;
mod path_property;
mod postgres;
mod proxy;
mod redis_modes;
mod seams;
mod shared_state;
mod telemetry;
mod trust_boundary;
