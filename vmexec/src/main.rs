//! `vmexec`: run Python or shell jobs in fresh pid1 microVMs. One file per
//! command under `cmd/`; the arguments in `args`, the failures and their
//! exit codes in `failure`.

mod args;
mod cmd;
mod failure;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::args::{ReplArgs, RunArgs, TemplateAction};

#[derive(Parser)]
#[command(name = "vmexec", version, about = "Run Python or shell code in a fresh pid1 microVM")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot a VM, run one job, print its output, exit with its exit code.
    Run(RunArgs),
    /// Make, show or remove the snapshot templates VMs are restored from.
    #[command(subcommand)]
    Template(TemplateAction),
    /// A stateful session in one VM: read steps from a terminal, or from a
    /// pipe as `python3 -i` does (a statement runs once it is complete).
    Repl(ReplArgs),
    /// Serve runs and sessions over HTTP from a warm pool of VMs.
    Serve(cmd::serve::ServeArgs),
}

fn main() -> ExitCode {
    // Ctrl-C: no QEMU, socket, temporary file or half-made template stays.
    let _ = ctrlc::set_handler(|| {
        vmhost::cleanup::interrupt();
        std::process::exit(130);
    });
    match Cli::parse().command {
        Command::Run(args) => cmd::run::main(args),
        Command::Template(action) => cmd::template::main(action),
        Command::Repl(args) => cmd::repl::main(args),
        Command::Serve(args) => cmd::serve::main(args),
    }
}
