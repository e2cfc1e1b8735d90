//! One module per command, and the client of a service that `run` and
//! `repl` are with `--server`.

pub mod remote;
pub mod repl;
pub mod run;
pub mod serve;
pub mod template;
