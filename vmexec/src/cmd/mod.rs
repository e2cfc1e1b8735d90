//! One module per command.

pub mod repl;
pub mod run;
pub mod serve;
pub mod template;
