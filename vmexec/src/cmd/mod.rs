//! One module per command.

pub mod repl;
pub mod run;
pub mod template;
