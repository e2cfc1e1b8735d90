//! Resolving and installing a set with pip, for the guest's interpreter
//! rather than the host's: CPython 3.11, x86_64, manylinux wheels for the
//! guest's glibc 2.36, binary wheels only (a wheel runs no code when it is
//! installed; an sdist's build would run the package's code on the host).
//!
//! Resolving is pip's `--dry-run --report`: the set's every distribution
//! with its version and wheel hash. Installing is a second pip call given
//! exactly that set (`--no-deps --require-hashes`), so what the layer holds
//! is what was recorded, byte for byte, whatever the index says later.
//! pip's words on failure are turned into a [`PackageError`] naming the
//! package (see [`classify`]).

use std::fmt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde::Deserialize;

use super::error::PackageError;
use super::spec::{Requirements, normalise};

/// The guest's platform as pip's tags: glibc 2.36 takes every manylinux
/// wheel up to it (pip fills in the versions between), and manylinux2014
/// is named too for indexes that only know the old alias.
const GUEST_TARGET: [&str; 12] = [
    "--platform",
    "manylinux_2_36_x86_64",
    "--platform",
    "manylinux2014_x86_64",
    "--python-version",
    "3.11",
    "--implementation",
    "cp",
    "--abi",
    "cp311",
    "--only-binary",
    ":all:",
];

/// One try per index request and a short timeout: an unreachable index is
/// reported in seconds, not after pip's five retries of 15 s.
const NETWORK: [&str; 4] = ["--retries", "1", "--timeout", "20"];

/// One distribution of a resolved set.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Resolved {
    /// Normalised, as in [`normalise`].
    pub name: String,
    pub version: String,
    /// The wheel's SHA-256, hex.
    pub sha256: String,
}

/// What a set of requirements resolved to: every distribution installed,
/// dependencies included, sorted by name.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResolvedSet(pub Vec<Resolved>);

impl ResolvedSet {
    /// One `name==version sha256=HEX` line a distribution: the text the
    /// layer's address is the hash of, and what the sets cache keeps.
    pub fn text(&self) -> String {
        self.0.iter().map(|r| format!("{}=={} sha256={}\n", r.name, r.version, r.sha256)).collect()
    }

    /// `name==version` of each distribution: what a result reports.
    pub fn pins(&self) -> Vec<String> {
        self.0.iter().map(|r| format!("{}=={}", r.name, r.version)).collect()
    }

    /// Reads [`ResolvedSet::text`] back; `None` if it is not that.
    pub fn from_text(text: &str) -> Option<ResolvedSet> {
        let mut set = Vec::new();
        for line in text.lines() {
            let (pin, hash) = line.split_once(" sha256=")?;
            let (name, version) = pin.split_once("==")?;
            let hex = |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
            if name.is_empty() || version.is_empty() || !hex(hash) {
                return None;
            }
            set.push(Resolved {
                name: name.to_owned(),
                version: version.to_owned(),
                sha256: hash.to_owned(),
            });
        }
        set.sort();
        Some(ResolvedSet(set))
    }
}

impl fmt::Display for ResolvedSet {
    /// `numpy 2.1.3, six 1.17.0`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self.0.iter().map(|r| format!("{} {}", r.name, r.version)).collect();
        f.write_str(&names.join(", "))
    }
}

/// pip's installation report (`--report`), the parts read here.
#[derive(Deserialize)]
struct Report {
    install: Vec<ReportItem>,
}

#[derive(Deserialize)]
struct ReportItem {
    metadata: ReportMetadata,
    download_info: DownloadInfo,
}

#[derive(Deserialize)]
struct ReportMetadata {
    name: String,
    version: String,
}

#[derive(Deserialize)]
struct DownloadInfo {
    url: String,
    archive_info: Option<ArchiveInfo>,
}

#[derive(Deserialize)]
struct ArchiveInfo {
    hashes: Option<std::collections::BTreeMap<String, String>>,
}

/// The resolved set in pip's report.
pub fn parse_report(json: &str) -> Result<ResolvedSet, PackageError> {
    let bad =
        |why: String| PackageError::Pip { step: "resolve", detail: format!("unreadable report: {why}") };
    let report: Report = serde_json::from_str(json).map_err(|e| bad(e.to_string()))?;
    let mut set = Vec::new();
    for item in report.install {
        let name = normalise(&item.metadata.name);
        if !item.download_info.url.ends_with(".whl") {
            return Err(PackageError::NoWheel { name, versions: Vec::new() });
        }
        let sha256 =
            item.download_info.archive_info.and_then(|a| a.hashes).and_then(|mut h| h.remove("sha256"));
        let Some(sha256) = sha256 else { return Err(bad(format!("no sha256 for {name}"))) };
        set.push(Resolved { name, version: item.metadata.version, sha256 });
    }
    set.sort();
    Ok(ResolvedSet(set))
}

/// How pip is run: the interpreter whose pip it is.
pub struct Pip<'a> {
    pub python: &'a Path,
}

impl Pip<'_> {
    fn command(&self) -> Command {
        let mut c = Command::new(self.python);
        // No version check, no prompt; the user's index and proxy
        // settings (environment, pip.conf) are kept: they are how this
        // host reaches a registry.
        c.args(["-m", "pip"]).env("PIP_DISABLE_PIP_VERSION_CHECK", "1").env("PIP_NO_INPUT", "1");
        c.stdin(Stdio::null());
        c
    }

    fn run(&self, mut command: Command) -> Result<Output, PackageError> {
        command
            .output()
            .map_err(|source| PackageError::Tool { tool: self.python.display().to_string(), source })
    }

    /// Resolves `requirements` for the guest; `work` holds pip's report and log.
    pub fn resolve(&self, requirements: &Requirements, work: &Path) -> Result<ResolvedSet, PackageError> {
        let report = work.join("report.json");
        let log = work.join("resolve.log");
        let mut c = self.command();
        c.args(["install", "--dry-run", "--ignore-installed", "--quiet"]).args(GUEST_TARGET).args(NETWORK);
        c.arg("--report").arg(&report).arg("--log").arg(&log).arg("--target").arg(work.join("unused"));
        c.arg("--").args(requirements.args());
        let out = self.run(c)?;
        if !out.status.success() {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(self.explain(&String::from_utf8_lossy(&out.stderr), &log, "resolve"));
        }
        let json = std::fs::read_to_string(&report)
            .map_err(|e| PackageError::Pip { step: "resolve", detail: format!("no report: {e}") })?;
        parse_report(&json)
    }

    /// Installs exactly `set` (its wheels, checked against their hashes)
    /// into `target`.
    pub fn install(&self, set: &ResolvedSet, target: &Path, work: &Path) -> Result<(), PackageError> {
        let pins = work.join("pins.txt");
        let text: String =
            set.0.iter().map(|r| format!("{}=={} --hash=sha256:{}\n", r.name, r.version, r.sha256)).collect();
        std::fs::write(&pins, text).map_err(|source| PackageError::Io { path: pins.clone(), source })?;
        let log = work.join("install.log");
        let mut c = self.command();
        c.args(["install", "--no-deps", "--require-hashes", "--no-compile", "--ignore-installed", "--quiet"]);
        c.args(GUEST_TARGET).args(NETWORK).arg("--log").arg(&log).arg("--target").arg(target);
        c.arg("-r").arg(&pins);
        let out = self.run(c)?;
        if !out.status.success() {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(self.explain(&String::from_utf8_lossy(&out.stderr), &log, "install"));
        }
        Ok(())
    }

    /// [`classify`], with the index asked which versions a package has
    /// when pip found none for the guest.
    fn explain(&self, stderr: &str, log: &str, step: &'static str) -> PackageError {
        classify(stderr, log, step, |name| self.any_versions(name))
    }

    /// The versions the index has of `name` for any platform, sdists
    /// included (`pip index versions`); empty when it has none.
    fn any_versions(&self, name: &str) -> Vec<String> {
        let mut c = self.command();
        c.args(["index", "versions"]).args(NETWORK).args(["--", name]);
        let Ok(out) = c.output() else { return Vec::new() };
        let stdout = String::from_utf8_lossy(&out.stdout);
        stdout
            .lines()
            .find_map(|line| line.strip_prefix("Available versions:"))
            .map(|list| list.split(',').map(|v| v.trim().to_owned()).filter(|v| !v.is_empty()).collect())
            .unwrap_or_default()
    }
}

/// Turns pip's failure into the error that names its cause: the index
/// unreachable (seen in pip's log, which records every connection error),
/// the requirements in conflict, a version that does not exist, a package
/// with no wheel for the guest, or no such package. `versions` gives the
/// versions of a package the index has for any platform.
pub fn classify(
    stderr: &str,
    log: &str,
    step: &'static str,
    versions: impl Fn(&str) -> Vec<String>,
) -> PackageError {
    const CONNECTION: [&str; 5] = [
        "connection error",
        "NewConnectionError",
        "Failed to establish a new connection",
        "ConnectTimeoutError",
        "ProxyError",
    ];
    let not_found =
        stderr.lines().find_map(|l| l.trim().strip_prefix("ERROR: No matching distribution found for "));
    if let Some(requirement) = not_found {
        if let Some(line) = CONNECTION.iter().find_map(|c| log.lines().find(|l| l.contains(c))) {
            return PackageError::Unreachable { detail: unreachable_detail(log, line) };
        }
        let requirement = requirement.trim().to_owned();
        let name_end = requirement.find(|c: char| !(c.is_ascii_alphanumeric() || "-_.".contains(c)));
        let name = normalise(&requirement[..name_end.unwrap_or(requirement.len())]);
        let listed = stderr
            .lines()
            .find_map(|l| {
                l.split_once("(from versions: ").map(|(_, rest)| rest.trim_end_matches(')').to_owned())
            })
            .unwrap_or_default();
        if listed != "none" && !listed.is_empty() {
            let available = listed.split(',').map(|v| v.trim().to_owned()).collect();
            return PackageError::NoSuchVersion { requirement, available };
        }
        let any = versions(&name);
        if any.is_empty() {
            return PackageError::UnknownPackage { name };
        }
        return PackageError::NoWheel { name, versions: any };
    }
    if stderr.contains("ResolutionImpossible") || stderr.contains("conflicting dependencies") {
        let detail: Vec<&str> = stderr
            .lines()
            .map(str::trim)
            .filter(|l| {
                l.starts_with("ERROR: Cannot install")
                    || l.starts_with("The user requested")
                    || l.contains(" depends on ")
            })
            .collect();
        return PackageError::Conflict { detail: detail.join("; ") };
    }
    if let Some(line) = stderr.lines().find(|l| l.contains("No space left on device")) {
        return PackageError::Pip { step, detail: line.trim().to_owned() };
    }
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("ERROR")).collect();
    let detail = if errors.is_empty() { stderr.trim() } else { &errors.join("\n") };
    PackageError::Pip { step, detail: tail(detail, 2000) }
}

/// The last `max` bytes of `s` (on a character boundary).
/// What a person needs of pip's connection error: the URL it could not
/// fetch and the cause (`http://127.0.0.1:9/simple/six/: [Errno 111]
/// Connection refused`), without object addresses that change each run.
fn unreachable_detail(log: &str, line: &str) -> String {
    let between = |text: &'_ str, start: &str, end: &[char]| -> Option<String> {
        let rest = &text[text.find(start)? + start.len()..];
        Some(rest[..rest.find(end).unwrap_or(rest.len())].trim().to_owned())
    };
    let url = log.lines().find_map(|l| between(l, "Could not fetch URL ", &[' ']));
    let cause = [line].into_iter().chain(log.lines()).find_map(|l| {
        between(l, "Failed to establish a new connection: ", &['\'', ')'])
            .or_else(|| between(l, "ProxyError(", &['\'', ')']))
            .or_else(|| l.contains("timed out").then(|| "timed out".to_owned()))
    });
    match (url, cause) {
        (Some(url), Some(cause)) => format!("{}: {cause}", url.trim_end_matches(':')),
        (Some(url), None) => url.trim_end_matches(':').to_owned(),
        (None, Some(cause)) => cause,
        (None, None) => tail(line.trim(), 300),
    }
}

fn tail(s: &str, max: usize) -> String {
    let mut start = s.len().saturating_sub(max);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    s[start..].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOT_FOUND: &str = "ERROR: Could not find a version that satisfies the requirement {R} (from versions: {V})\n\
                             ERROR: No matching distribution found for {R}\n";

    fn pip_says(requirement: &str, versions: &str) -> String {
        NOT_FOUND.replace("{R}", requirement).replace("{V}", versions)
    }

    fn none(_: &str) -> Vec<String> {
        Vec::new()
    }

    #[test]
    fn a_missing_version_lists_what_there_is() {
        let e = classify(&pip_says("six==99.1", "1.16.0, 1.17.0"), "", "resolve", none);
        match e {
            PackageError::NoSuchVersion { requirement, available } => {
                assert_eq!(requirement, "six==99.1");
                assert_eq!(available, ["1.16.0", "1.17.0"]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn no_versions_is_an_unknown_package_or_one_without_a_wheel_for_the_guest() {
        let unknown = classify(&pip_says("No_Such-pkg", "none"), "", "resolve", none);
        assert!(
            matches!(&unknown, PackageError::UnknownPackage { name } if name == "no-such-pkg"),
            "{unknown:?}"
        );
        let sdist_only = classify(&pip_says("pycrypto", "none"), "", "resolve", |n| {
            assert_eq!(n, "pycrypto");
            vec!["2.6.1".into()]
        });
        assert!(
            matches!(&sdist_only, PackageError::NoWheel { name, .. } if name == "pycrypto"),
            "{sdist_only:?}"
        );
        assert!(sdist_only.to_string().contains("pycrypto"), "{sdist_only}");
    }

    #[test]
    fn a_connection_error_in_the_log_is_an_unreachable_index() {
        let log = "Starting new HTTP connection (1): 127.0.0.1:9\n\
                   WARNING: Retrying (Retry(total=0)) after connection broken by 'NewConnectionError('<pip._vendor.\
                   urllib3.connection.HTTPConnection object at 0x7fecfc872510>: Failed to establish a new \
                   connection: [Errno 111] Connection refused')': /simple/six/\n\
                   Could not fetch URL http://127.0.0.1:9/simple/six/: connection error: HTTPConnectionPool(...) \
                   (Caused by NewConnectionError(...Connection refused)) - skipping\n";
        let e =
            classify(&pip_says("six", "none"), log, "resolve", |_| panic!("the index is not asked again"));
        let PackageError::Unreachable { detail } = &e else { panic!("{e:?}") };
        // The URL and the cause, without the object's address.
        assert_eq!(detail, "http://127.0.0.1:9/simple/six/: [Errno 111] Connection refused");
    }

    #[test]
    fn a_conflict_says_who_asked_for_what() {
        let stderr = "ERROR: Cannot install numpy<2 and numpy==2.1.3 because these package versions have conflicting dependencies.\n\n\
                      The conflict is caused by:\n    The user requested numpy==2.1.3\n    The user requested numpy<2\n\n\
                      ERROR: ResolutionImpossible: for help visit https://pip.pypa.io/\n";
        let e = classify(stderr, "", "resolve", none);
        match e {
            PackageError::Conflict { detail } => {
                assert!(detail.contains("Cannot install numpy<2 and numpy==2.1.3"), "{detail}");
                assert!(detail.contains("The user requested numpy<2"), "{detail}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn anything_else_keeps_pips_error_lines() {
        let e = classify(
            "noise\nERROR: Could not install packages due to an OSError: boom\n",
            "",
            "install",
            none,
        );
        assert!(
            matches!(&e, PackageError::Pip { step: "install", detail } if detail.ends_with("boom")),
            "{e:?}"
        );
    }

    #[test]
    fn the_report_gives_names_versions_and_wheel_hashes_sorted() {
        let hash = "a".repeat(64);
        let json = format!(
            r#"{{"version": "1", "install": [
                {{"metadata": {{"name": "Six", "version": "1.17.0"}},
                  "download_info": {{"url": "https://x/six-1.17.0-py2.py3-none-any.whl",
                                     "archive_info": {{"hashes": {{"sha256": "{hash}"}}}}}}}},
                {{"metadata": {{"name": "numpy", "version": "2.1.3"}},
                  "download_info": {{"url": "https://x/numpy-2.1.3-cp311-cp311-manylinux_2_17_x86_64.whl",
                                     "archive_info": {{"hashes": {{"sha256": "{hash}"}}}}}}}}]}}"#
        );
        let set = parse_report(&json).unwrap();
        assert_eq!(set.to_string(), "numpy 2.1.3, six 1.17.0");
        assert_eq!(ResolvedSet::from_text(&set.text()), Some(set.clone()));
        assert_eq!(ResolvedSet::from_text("numpy 2\n"), None);
        let sdist = json.replace("none-any.whl", "tar.gz");
        assert!(matches!(parse_report(&sdist), Err(PackageError::NoWheel { name, .. }) if name == "six"));
    }
}
