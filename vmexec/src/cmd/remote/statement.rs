//! When the lines of a `repl --server` make a statement to send. A local
//! session pushes each line to the guest, whose driver runs it once the
//! statement is complete; a service only runs whole cells, so the client
//! decides here, by the driver's own rules: for Python those of the
//! interactive console (a statement that is not open, and a compound one,
//! `if`/`def`/`@...`, once a blank line ends it), for the shell `bash -n`.
//!
//! One difference is left: inside an open compound statement a line at
//! the left margin does not end it (the console calls that a syntax
//! error); the block and that line run together once a blank line comes.

use std::process::{Command, Stdio};

use vmhost::api::Language;

/// What a pushed line made.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed {
    /// The statement goes on: more lines are needed.
    More,
    /// A complete statement: the cell to run.
    Cell(String),
    /// A blank line (or a comment) with nothing pending: nothing to run,
    /// which a console counts as a step that succeeded.
    Nothing,
}

/// The lines of the statement being typed.
#[derive(Debug)]
pub struct Statement {
    language: Language,
    lines: Vec<String>,
}

impl Statement {
    pub fn new(language: Language) -> Statement {
        Statement { language, lines: Vec::new() }
    }

    pub fn push(&mut self, line: &str) -> Pushed {
        self.lines.push(line.to_owned());
        let code = self.lines.join("\n");
        let open = match self.language {
            Language::Python => {
                if self.lines.iter().all(|l| is_blank_or_comment(l)) {
                    self.lines.clear();
                    return Pushed::Nothing;
                }
                python_wants_more(&code, line)
            }
            Language::Sh => {
                if self.lines.iter().all(|l| l.trim().is_empty()) {
                    self.lines.clear();
                    return Pushed::Nothing;
                }
                shell_wants_more(&code)
            }
        };
        if open {
            return Pushed::More;
        }
        self.lines.clear();
        Pushed::Cell(code.trim_end().to_owned())
    }

    /// At the end of the input: a statement still open is finished as a
    /// blank line would (as a local session does); `Err` when even that
    /// leaves it open, and it is dropped.
    pub fn finish(&mut self) -> Result<Option<String>, ()> {
        if self.lines.is_empty() {
            return Ok(None);
        }
        match self.push("") {
            Pushed::Cell(code) => Ok(Some(code)),
            Pushed::Nothing => Ok(None),
            Pushed::More => {
                self.lines.clear();
                Err(())
            }
        }
    }

    pub fn is_open(&self) -> bool {
        !self.lines.is_empty()
    }
}

fn is_blank_or_comment(line: &str) -> bool {
    let line = line.trim_start();
    line.is_empty() || line.starts_with('#')
}

/// Python's compound statements, which the console runs only once a blank
/// line ends them (`match` is one only with a `:`, found by the scan).
const COMPOUND: [&str; 8] = ["if", "while", "for", "try", "with", "def", "class", "async"];

/// Whether the console would ask for more after `last`, the source so far
/// being `code`.
fn python_wants_more(code: &str, last: &str) -> bool {
    let scan = Scan::of(code);
    if scan.open() {
        return true;
    }
    let first = code.trim_start();
    let word: String = first.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
    let compound = first.starts_with('@') || COMPOUND.contains(&word.as_str()) || scan.header_colon;
    compound && !last.trim().is_empty()
}

/// A string literal being read: its quote and whether it is triple.
#[derive(Debug, Clone, Copy)]
struct Quote {
    mark: u8,
    triple: bool,
}

/// What Python's tokenizer would know at the end of some source.
#[derive(Debug, Default)]
struct Scan {
    /// Open brackets.
    depth: usize,
    string: Option<Quote>,
    /// The source ends in a backslash that continues the line (or the
    /// string on it).
    continued: bool,
    /// The first logical line ends in `:`, as a block's header does.
    header_colon: bool,
}

impl Scan {
    fn of(code: &str) -> Scan {
        let bytes = code.as_bytes();
        let mut scan = Scan::default();
        // The last byte of the first logical line that is not blank or a
        // comment; `None` once that line has ended.
        let mut last_of_first = Some(None);
        let mut i = 0;
        while i < bytes.len() {
            let c = bytes[i];
            if let Some(quote) = scan.string {
                match c {
                    // An escaped byte (a quote, or the line's end) does not end it.
                    b'\\' => {
                        scan.continued = i + 1 == bytes.len();
                        i += 1;
                    }
                    _ if c == quote.mark && !quote.triple => scan.string = None,
                    _ if c == quote.mark && bytes[i..].starts_with(&[c, c, c]) => {
                        scan.string = None;
                        i += 2;
                    }
                    // A one-line string without its end: the service's
                    // Python reports it, the statement is not open.
                    b'\n' if !quote.triple => scan.string = None,
                    _ => {}
                }
                if scan.string.is_none()
                    && let Some(last) = &mut last_of_first
                {
                    *last = Some(c);
                }
                i += 1;
                continue;
            }
            match c {
                b'#' => {
                    while i < bytes.len() && bytes[i] != b'\n' {
                        i += 1;
                    }
                    continue;
                }
                b'\'' | b'"' => {
                    let triple = bytes[i..].starts_with(&[c, c, c]);
                    scan.string = Some(Quote { mark: c, triple });
                    i += if triple { 3 } else { 1 };
                    continue;
                }
                b'(' | b'[' | b'{' => scan.depth += 1,
                // An unmatched one is the service's Python's to report.
                b')' | b']' | b'}' => scan.depth = scan.depth.saturating_sub(1),
                b'\\' if i + 1 == bytes.len() => scan.continued = true,
                b'\\' if bytes[i + 1] == b'\n' => {
                    i += 2;
                    continue;
                }
                b'\n' if scan.depth == 0 => {
                    if let Some(Some(last)) = last_of_first {
                        scan.header_colon = last == b':';
                        last_of_first = None;
                    }
                }
                _ => {}
            }
            if !c.is_ascii_whitespace()
                && let Some(last) = &mut last_of_first
            {
                *last = Some(c);
            }
            i += 1;
        }
        if let Some(Some(last)) = last_of_first {
            scan.header_colon = last == b':';
        }
        scan
    }

    /// More lines are needed whatever comes next.
    fn open(&self) -> bool {
        self.depth > 0 || self.continued || self.string.is_some_and(|q| q.triple)
    }
}

/// The shell driver's rule: `bash -n` finds the end of the file too early.
/// It only parses, so it returns at once. Without a bash here each line is
/// taken as complete (the guest's shell then says what is wrong with a
/// partial one).
fn shell_wants_more(code: &str) -> bool {
    let checked = Command::new("bash")
        .arg("-n")
        .arg("-c")
        .arg(format!("{code}\n"))
        // Its message in English, whatever the caller's locale.
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output();
    match checked {
        Ok(out) => {
            !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("unexpected end of file")
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use Pushed::{Cell, More, Nothing};

    fn cell(code: &str) -> Pushed {
        Cell(code.to_owned())
    }

    /// `lines` pushed one by one give `expected`.
    fn check(language: Language, lines: &[&str], expected: &[Pushed]) {
        let mut statement = Statement::new(language);
        let got: Vec<Pushed> = lines.iter().map(|line| statement.push(line)).collect();
        assert_eq!(got, expected, "{lines:?}");
    }

    fn python(lines: &[&str], expected: &[Pushed]) {
        check(Language::Python, lines, expected);
    }

    // Each case was checked against `codeop.compile_command(..., "single")`
    // on the joined lines, as the guest's driver calls it (Python 3.11).

    #[test]
    fn a_simple_statement_runs_at_once() {
        python(&["x = 41", "print(x + 1)"], &[cell("x = 41"), cell("print(x + 1)")]);
        python(&["match = 3"], &[cell("match = 3")]);
        python(&["f = lambda: 0"], &[cell("f = lambda: 0")]);
        python(&["x = 1  # if:"], &[cell("x = 1  # if:")]);
        python(&["s = 'if x:'"], &[cell("s = 'if x:'")]);
        python(&["print(')')"], &[cell("print(')')")]);
        python(&[r#"s = """don't""""#], &[cell(r#"s = """don't""""#)]);
        python(&[r"s = r'\''"], &[cell(r"s = r'\''")]);
    }

    #[test]
    fn a_compound_statement_runs_at_a_blank_line() {
        python(&["if x:", "    y", ""], &[More, More, cell("if x:\n    y")]);
        python(&["if x: y", ""], &[More, cell("if x: y")]);
        python(&["def f(): return 1", ""], &[More, cell("def f(): return 1")]);
        python(&["@dec", "def f():", "    pass", ""], &[More, More, More, cell("@dec\ndef f():\n    pass")]);
        python(
            &["try:", "    x", "except E:", "    y", ""],
            &[More, More, More, More, cell("try:\n    x\nexcept E:\n    y")],
        );
        python(
            &["match p:", "    case 1:", "        pass", ""],
            &[More, More, More, cell("match p:\n    case 1:\n        pass")],
        );
        python(
            &["for i in range(2):", "    print(i)", "", "z"],
            &[More, More, cell("for i in range(2):\n    print(i)"), cell("z")],
        );
        python(
            &["class A:  # c", "    x = 1", "", "A.x"],
            &[More, More, cell("class A:  # c\n    x = 1"), cell("A.x")],
        );
    }

    #[test]
    fn an_open_bracket_string_or_backslash_asks_for_more() {
        python(&["x = (1,", "2)"], &[More, cell("x = (1,\n2)")]);
        python(&["x = (1,", "", "2)"], &[More, More, cell("x = (1,\n\n2)")]);
        python(&["d = {1:", "2}"], &[More, cell("d = {1:\n2}")]);
        python(&["x = [", "# ]", "]"], &[More, More, cell("x = [\n# ]\n]")]);
        python(&["s = '''a", "", "b'''"], &[More, More, cell("s = '''a\n\nb'''")]);
        python(&["x = 1 + \\", "2"], &[More, cell("x = 1 + \\\n2")]);
        python(&["s = 'a\\", "b'"], &[More, cell("s = 'a\\\nb'")]);
    }

    #[test]
    fn blank_lines_and_comments_alone_run_nothing() {
        python(&["", "# c", "   ", "x"], &[Nothing, Nothing, Nothing, cell("x")]);
    }

    #[test]
    fn broken_code_is_sent_for_the_guest_to_report() {
        // The console reports these at once; so does the service's Python.
        python(&["x = = 1"], &[cell("x = = 1")]);
        python(&[")"], &[cell(")")]);
        python(&["s = 'abc"], &[cell("s = 'abc")]);
    }

    #[test]
    fn a_margin_line_inside_a_block_waits_for_the_blank_line() {
        // The documented difference: the console calls `z` a syntax error.
        python(&["if x:", "    y", "z", ""], &[More, More, More, cell("if x:\n    y\nz")]);
    }

    #[test]
    fn the_end_of_the_input_finishes_or_drops_a_statement() {
        let mut statement = Statement::new(Language::Python);
        assert_eq!(statement.finish(), Ok(None));
        assert_eq!(statement.push("for i in (1, 2):"), More);
        assert_eq!(statement.push("    print(i)"), More);
        assert!(statement.is_open());
        assert_eq!(statement.finish(), Ok(Some("for i in (1, 2):\n    print(i)".to_owned())));
        assert!(!statement.is_open());
        assert_eq!(statement.push("x = (1,"), More);
        assert_eq!(statement.finish(), Err(()));
        assert!(!statement.is_open());
    }

    fn have_bash() -> bool {
        Command::new("bash").arg("-c").arg("true").status().is_ok_and(|s| s.success())
    }

    #[test]
    fn a_shell_statement_is_complete_when_bash_says_so() {
        if !have_bash() {
            eprintln!("skipped: no bash on this host");
            return;
        }
        let sh = |lines: &[&str], expected: &[Pushed]| check(Language::Sh, lines, expected);
        sh(&["x=41", "echo $((x + 1))"], &[cell("x=41"), cell("echo $((x + 1))")]);
        sh(&["if true; then", "  echo yes", "fi"], &[More, More, cell("if true; then\n  echo yes\nfi")]);
        sh(&["for i in 1 2; do", "echo $i", "done"], &[More, More, cell("for i in 1 2; do\necho $i\ndone")]);
        // Neither an open quote nor a trailing backslash is an early end
        // to `bash -n`: the driver runs each line as it is.
        sh(&["echo 'a", "b'"], &[cell("echo 'a"), cell("b'")]);
        sh(&["echo a \\", "b"], &[cell("echo a \\"), cell("b")]);
        sh(&["f() {", "echo f", "}"], &[More, More, cell("f() {\necho f\n}")]);
        sh(&["", "echo"], &[Nothing, cell("echo")]);
        // A syntax error that is not an early end: the guest reports it.
        sh(&["fi"], &[cell("fi")]);
    }
}
