//! meshdoctor's command line against a controller's HTTP API, as a library so that its output
//! can be tested without a controller. The binary is `src/main.rs`.

pub mod args;
pub mod check;
pub mod client;
pub mod commands;
pub mod output;
pub mod state;
