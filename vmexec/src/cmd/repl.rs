//! `vmexec repl`: a stateful session in one VM, fed line by line from a
//! terminal or a pipe, as `python3 -i` takes it.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use vmhost::{Lang, Vm, VmConfig};

use crate::args::ReplArgs;
use crate::failure::{Failure, InputError};

/// Runs the session; its failure, if any, on stderr with its exit code.
pub fn main(args: ReplArgs) -> ExitCode {
    repl(args).unwrap_or_else(|failure| {
        eprintln!("vmexec: {}", failure.message());
        ExitCode::from(failure.classify().0)
    })
}

/// `vmexec repl`: each line read goes to the session as a console takes
/// it; the output of each complete statement is printed once it ran. Exits
/// with the last step's status.
fn repl(args: ReplArgs) -> Result<ExitCode, Failure> {
    let lang = args.lang.language().lang();
    let config = VmConfig { cold: args.cold, ..args.vm.config() };
    let mut vm = Vm::boot(&config)?;
    super::run::warn_fallback(&vm);
    let terminal = std::io::stdin().is_terminal();
    let prompts = match lang {
        Lang::Shell => ("$ ", "> "),
        _ => (">>> ", "... "),
    };
    let mut last = 0;
    let result = (|| -> Result<(), Failure> {
        let mut session = vm.session(lang)?;
        let mut more = false;
        let mut lines = std::io::stdin().lines();
        loop {
            if terminal {
                eprint!("{}", if more { prompts.1 } else { prompts.0 });
            }
            let (line, last_line) = match lines.next() {
                Some(line) => (line.map_err(InputError::Stdin)?, false),
                // At the end, a statement still open is finished as a
                // blank line would (or dropped, if that does not).
                None if more => (String::new(), true),
                None => break,
            };
            match session.push(&line)? {
                None if last_line => {
                    eprintln!("vmexec: the input ended inside a statement");
                    break;
                }
                None => more = true,
                Some(step) => {
                    more = false;
                    std::io::stdout().write_all(&step.stdout).and_then(|()| std::io::stdout().flush()).ok();
                    std::io::stderr().write_all(&step.stderr).ok();
                    last = step.exit;
                }
            }
            if last_line {
                break;
            }
        }
        session.close()?;
        Ok(())
    })();
    vm.shutdown();
    result?;
    Ok(ExitCode::from(u8::try_from(last & 0xff).unwrap_or(1)))
}
