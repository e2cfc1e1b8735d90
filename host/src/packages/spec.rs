//! Requirement strings as a run names them (`numpy==2.1.3`, `requests`,
//! `httpx[http2]>=0.27,<1`), checked before anything is asked of a
//! registry, and the pinned set they make: canonical, sorted, the same
//! text however the caller spelt or ordered it.
//!
//! Only what pip calls a named requirement is taken: a name, extras and
//! version specifiers. URLs, paths, environment markers and options are
//! refused: they would reach pip's command line, which must see nothing
//! but requirements.

use std::collections::BTreeMap;
use std::fmt;

use super::error::PackageError;

/// The longest requirement string taken: names on PyPI stay far below it,
/// and a request cannot make pip's command line grow without bound.
pub const MAX_SPEC_LEN: usize = 200;

/// The most requirements one set may name.
pub const MAX_SPECS: usize = 64;

/// The comparison operators of PEP 440, longest first so that `===` is not
/// read as `==` followed by `=`.
const OPERATORS: [&str; 8] = ["===", "==", "!=", "~=", "<=", ">=", "<", ">"];

/// One version clause, such as `>=1.2`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Specifier {
    pub op: &'static str,
    pub version: String,
}

/// One checked requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    /// The normalised name (PEP 503: lower case, runs of `-_.` as `-`).
    pub name: String,
    pub extras: Vec<String>,
    pub specifiers: Vec<Specifier>,
}

impl Requirement {
    /// Parses one requirement string.
    pub fn parse(spec: &str) -> Result<Requirement, PackageError> {
        let bad = |why: &str| PackageError::BadRequirement { spec: spec.to_owned(), why: why.to_owned() };
        if spec.len() > MAX_SPEC_LEN {
            return Err(bad(&format!("longer than {MAX_SPEC_LEN} bytes")));
        }
        let text = spec.trim();
        if text.is_empty() {
            return Err(bad("empty"));
        }
        if text.starts_with('-') {
            return Err(bad("options are not requirements"));
        }
        if text.contains(';') {
            return Err(bad("environment markers are not taken: the guest's environment is fixed"));
        }
        if text.contains('@') || text.contains("://") || text.contains('/') {
            return Err(bad("only names from the package index are taken, not URLs or paths"));
        }
        let name_end =
            text.find(|c: char| !(c.is_ascii_alphanumeric() || "-_.".contains(c))).unwrap_or(text.len());
        let raw_name = &text[..name_end];
        let ends_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
        if !ends_ok(raw_name.chars().next()) || !ends_ok(raw_name.chars().last()) {
            return Err(bad("a requirement starts with a package name (letters, digits, `-`, `_`, `.`)"));
        }
        let mut rest = text[name_end..].trim_start();
        let mut extras = Vec::new();
        if let Some(inner) = rest.strip_prefix('[') {
            let Some((list, after)) = inner.split_once(']') else { return Err(bad("an unclosed `[`")) };
            for extra in list.split(',').map(str::trim) {
                if extra.is_empty() || !extra.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                {
                    return Err(bad("an extra is a name, as in `httpx[http2]`"));
                }
                extras.push(normalise(extra));
            }
            extras.sort();
            extras.dedup();
            rest = after.trim_start();
        }
        let mut specifiers = Vec::new();
        if !rest.is_empty() {
            for clause in rest.split(',').map(str::trim) {
                let Some(op) = OPERATORS.iter().find(|op| clause.starts_with(**op)) else {
                    return Err(bad(&format!(
                        "`{clause}` is not a version clause such as `==1.2` or `>=1.0`"
                    )));
                };
                let version = clause[op.len()..].trim();
                let version_char = |c: char| c.is_ascii_alphanumeric() || ".*+!_-".contains(c);
                if version.is_empty() || !version.chars().all(version_char) {
                    return Err(bad(&format!("`{clause}` has no version")));
                }
                specifiers.push(Specifier { op, version: version.to_owned() });
            }
        }
        specifiers.sort();
        specifiers.dedup();
        Ok(Requirement { name: normalise(raw_name), extras, specifiers })
    }

    /// The version it pins exactly, if it does.
    pub fn pin(&self) -> Option<&str> {
        self.specifiers.iter().find(|s| s.op == "==" && !s.version.contains('*')).map(|s| s.version.as_str())
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        if !self.extras.is_empty() {
            write!(f, "[{}]", self.extras.join(","))?;
        }
        let clauses: Vec<String> = self.specifiers.iter().map(|s| format!("{}{}", s.op, s.version)).collect();
        f.write_str(&clauses.join(","))
    }
}

/// The names under which pip, PyPI and the set's key know a package.
pub fn normalise(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut separator = false;
    for c in name.chars() {
        if "-_.".contains(c) {
            separator = true;
            continue;
        }
        if separator && !out.is_empty() {
            out.push('-');
        }
        separator = false;
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// A set of requirements as a run asks for it: one requirement a name
/// (a name asked for twice has its clauses merged), sorted by name.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Requirements(Vec<Requirement>);

impl Requirements {
    /// Checks every string; two different exact pins of one name are a
    /// conflict named here, before pip is asked.
    pub fn parse<S: AsRef<str>>(specs: &[S]) -> Result<Requirements, PackageError> {
        if specs.len() > MAX_SPECS {
            return Err(PackageError::TooMany { count: specs.len(), max: MAX_SPECS });
        }
        let mut by_name: BTreeMap<String, Requirement> = BTreeMap::new();
        for spec in specs {
            let new = Requirement::parse(spec.as_ref())?;
            let Some(old) = by_name.get_mut(&new.name) else {
                by_name.insert(new.name.clone(), new);
                continue;
            };
            if let (Some(a), Some(b)) = (old.pin(), new.pin())
                && a != b
            {
                return Err(PackageError::ConflictingPins {
                    name: new.name.clone(),
                    first: a.to_owned(),
                    second: b.to_owned(),
                });
            }
            old.extras.extend(new.extras);
            old.extras.sort();
            old.extras.dedup();
            old.specifiers.extend(new.specifiers);
            old.specifiers.sort();
            old.specifiers.dedup();
        }
        Ok(Requirements(by_name.into_values().collect()))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Requirement> {
        self.0.iter()
    }

    /// The canonical text: one requirement a line, sorted.
    pub fn text(&self) -> String {
        self.0.iter().map(|r| format!("{r}\n")).collect()
    }

    /// What pip is given.
    pub fn args(&self) -> Vec<String> {
        self.0.iter().map(Requirement::to_string).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(spec: &str) -> Requirement {
        Requirement::parse(spec).unwrap_or_else(|e| panic!("{spec}: {e}"))
    }

    fn refusal(spec: &str) -> String {
        match Requirement::parse(spec) {
            Err(PackageError::BadRequirement { why, .. }) => why,
            other => panic!("{spec}: {other:?}"),
        }
    }

    #[test]
    fn names_pins_ranges_and_extras_are_taken_and_written_canonically() {
        assert_eq!(parse("numpy==2.1.3").to_string(), "numpy==2.1.3");
        assert_eq!(parse("numpy==2.1.3").pin(), Some("2.1.3"));
        assert_eq!(parse("Requests").to_string(), "requests");
        assert_eq!(parse("Foo_Bar.baz").name, "foo-bar-baz");
        assert_eq!(parse(" httpx [ HTTP2 , cli ] >= 0.27 , <1 ").to_string(), "httpx[cli,http2]<1,>=0.27");
        assert_eq!(parse("six~=1.16").pin(), None);
        assert_eq!(parse("six==1.*").pin(), None, "a wildcard is not a pin");
        assert_eq!(parse("a===1.0").specifiers[0].op, "===");
    }

    #[test]
    fn anything_but_a_named_requirement_is_refused_with_why() {
        assert_eq!(refusal(""), "empty");
        assert_eq!(refusal("   "), "empty");
        assert!(refusal("--index-url=http://evil").contains("options"));
        assert!(refusal("-e .").contains("options"));
        assert!(refusal("numpy; python_version<'3'").contains("markers"));
        assert!(refusal("pkg @ https://x/y.whl").contains("URLs"));
        assert!(refusal("./local").contains("URLs or paths"));
        assert!(refusal("==1.0").contains("package name"));
        assert!(refusal("numpy-").contains("package name"));
        assert!(refusal("numpy 2.1").contains("version clause"));
        assert!(refusal("numpy==").contains("no version"));
        assert!(refusal("numpy==1 2").contains("no version"));
        assert!(refusal("httpx[").contains("unclosed"));
        assert!(refusal("httpx[a b]").contains("extra"));
        assert!(refusal("numpy\0").contains("version clause"));
        assert!(refusal(&"a".repeat(MAX_SPEC_LEN + 1)).contains("longer"));
    }

    #[test]
    fn a_set_is_sorted_merged_and_the_same_however_it_was_spelt() {
        let a = Requirements::parse(&["six", "NumPy==2.1.3", "attrs>=20"]).unwrap();
        let b = Requirements::parse(&["attrs>=20", "numpy==2.1.3", "Six", "six"]).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.text(), "attrs>=20\nnumpy==2.1.3\nsix\n");
        assert_eq!(a.args(), ["attrs>=20", "numpy==2.1.3", "six"]);
        let merged = Requirements::parse(&["numpy>=2", "numpy<3"]).unwrap();
        assert_eq!(merged.text(), "numpy<3,>=2\n");
        assert!(Requirements::parse::<&str>(&[]).unwrap().is_empty());
    }

    #[test]
    fn two_pins_of_one_name_conflict_before_any_registry_is_asked() {
        match Requirements::parse(&["numpy==2.1.3", "six", "NumPy==1.26.4"]) {
            Err(PackageError::ConflictingPins { name, first, second }) => {
                assert_eq!((name.as_str(), first.as_str(), second.as_str()), ("numpy", "2.1.3", "1.26.4"));
            }
            other => panic!("{other:?}"),
        }
        assert!(Requirements::parse(&["numpy==2.1.3", "numpy==2.1.3"]).is_ok(), "the same pin twice");
        let many: Vec<String> = (0..=MAX_SPECS).map(|i| format!("p{i}")).collect();
        assert!(matches!(Requirements::parse(&many), Err(PackageError::TooMany { .. })));
    }
}
