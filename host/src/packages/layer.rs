//! A set's layer: the installed tree, compiled for the guest's Python, with
//! the list of modules its zygote imports, made into an erofs image the
//! guest mounts read-only at [`MOUNT`]. Same set, same bytes: fixed
//! timestamps and owners, no extended attributes, modes normalised,
//! bytecode checked by hash (no mtimes in it) and compiled with a fixed
//! hash seed, the filesystem's UUID drawn from the layer's address.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::error::PackageError;
use super::resolve::ResolvedSet;

/// How long each step took, and which were served by the cache.
#[derive(Debug, Clone, Copy, Default)]
pub struct Steps {
    /// The resolved set came from the cache (no registry asked to resolve).
    pub set_cached: bool,
    /// The layer came from the cache (nothing installed).
    pub layer_cached: bool,
    pub resolve_ms: f64,
    pub install_ms: f64,
    pub layer_ms: f64,
}

/// A set's layer, ready to attach.
#[derive(Debug, Clone)]
pub struct Layer {
    /// The erofs image.
    pub image: PathBuf,
    /// Its address: the hash of the resolved set (and the preload choice).
    pub address: String,
    pub set: ResolvedSet,
    /// What the template's zygote imports.
    pub modules: Vec<String>,
    pub steps: Steps,
}

/// Where the guest mounts a layer; the root filesystem's `.pth` names it.
pub const MOUNT: &str = "/opt/pid1/packages";

/// The layer's list of what the zygote imports before the template is
/// saved: `NAME=VALUE` lines are set in its environment first, the other
/// lines are module names (see `rootfs/zygote.py`).
pub const PRELOAD_FILE: &str = ".pid1-preload";

/// The resolved set, as text, for whoever looks into a layer.
pub const SET_FILE: &str = ".pid1-set";

/// The bytecode magic of the guest's CPython 3.11 (`importlib.util.MAGIC_NUMBER`,
/// the same for every 3.11 release): the host's compiler must write it.
const GUEST_MAGIC: &str = "a70d0d0a";

/// Every file's time in the image, as the root filesystem's.
const EPOCH: u64 = 1_700_000_000;

/// Settings, documented by each library, that keep a numeric library from
/// starting a thread pool when it is imported: a zygote with threads is not
/// safe to fork (a child gets the pool's locks but not its threads). With
/// them, numpy's OpenBLAS is single-threaded, as a one-vCPU guest would
/// have it anyway.
pub const FORK_SAFE_ENV: [&str; 4] =
    ["OPENBLAS_NUM_THREADS=1", "OMP_NUM_THREADS=1", "MKL_NUM_THREADS=1", "NUMEXPR_NUM_THREADS=1"];

/// Whether `python` writes bytecode the guest's Python reads.
pub fn check_python(python: &Path) -> Result<(), PackageError> {
    let out = Command::new(python)
        .args([
            "-c",
            "import importlib.util, sys; print(importlib.util.MAGIC_NUMBER.hex(), sys.version.split()[0])",
        ])
        .output()
        .map_err(|source| PackageError::Tool { tool: python.display().to_string(), source })?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut fields = text.split_whitespace();
    let (magic, version) = (fields.next().unwrap_or(""), fields.next().unwrap_or("unknown"));
    if !out.status.success() || magic != GUEST_MAGIC {
        return Err(PackageError::HostPython { python: python.to_owned(), version: version.to_owned() });
    }
    Ok(())
}

/// Removes what does not belong in the guest (console scripts, whose `#!`
/// names the host's interpreter), normalises modes, and compiles every
/// module to bytecode with the guest's paths in it.
pub fn prepare_tree(python: &Path, site: &Path) -> Result<(), PackageError> {
    let _ = fs::remove_dir_all(site.join("bin"));
    run(Command::new("chmod").args(["-R", "u+rwX,go+rX,go-w"]).arg(site), "normalise modes")?;
    let mut compile = Command::new(python);
    // A fixed hash seed: the order of a frozenset constant in the bytecode
    // follows the string hashes.
    compile.env("PYTHONHASHSEED", "0").args(["-m", "compileall", "-q", "-j", "0"]);
    compile.args(["--invalidation-mode", "unchecked-hash", "-s"]).arg(site).args(["-p", MOUNT]).arg(site);
    // A file that does not compile (a Python 2 leftover in a wheel) is
    // skipped, as pip's own compile step skips it: the guest meets the
    // same SyntaxError when it imports it.
    let _ = compile
        .output()
        .map_err(|source| PackageError::Tool { tool: python.display().to_string(), source })?;
    Ok(())
}

/// The top-level modules the set's distributions install: from each
/// `top_level.txt`, else from the paths in its `RECORD`. Private names
/// (`_cffi_backend`) and test packages are left out.
pub fn top_level_modules(site: &Path) -> Vec<String> {
    let mut modules = Vec::new();
    let Ok(entries) = fs::read_dir(site) else { return modules };
    let mut dist_infos: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "dist-info"))
        .collect();
    dist_infos.sort();
    for info in dist_infos {
        let names: Vec<String> = match fs::read_to_string(info.join("top_level.txt")) {
            Ok(text) => text.lines().map(|l| l.trim().to_owned()).collect(),
            Err(_) => fs::read_to_string(info.join("RECORD"))
                .unwrap_or_default()
                .lines()
                .filter_map(|line| module_of_record_path(line.split(',').next()?))
                .collect(),
        };
        modules.extend(names);
    }
    modules.retain(|m| {
        !m.is_empty()
            && !m.starts_with('_')
            && m.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !matches!(m.as_str(), "test" | "tests")
            && (site.join(m).join("__init__.py").is_file()
                || site.join(format!("{m}.py")).is_file()
                || has_extension_module(site, m))
    });
    modules.sort();
    modules.dedup();
    modules
}

/// `numpy/__init__.py` → `numpy`, `six.py` → `six`; nothing for metadata,
/// bundled libraries or scripts.
fn module_of_record_path(path: &str) -> Option<String> {
    let mut parts = path.split('/');
    let first = parts.next()?;
    let nested = parts.next().is_some();
    if first.ends_with(".dist-info") || first.ends_with(".libs") || first.ends_with(".data") || first == ".."
    {
        return None;
    }
    match nested {
        true => Some(first.to_owned()),
        false => first.strip_suffix(".py").map(str::to_owned),
    }
}

/// Whether `site` holds a top-level C extension `name.*.so`.
fn has_extension_module(site: &Path, name: &str) -> bool {
    fs::read_dir(site).into_iter().flatten().flatten().any(|e| {
        let file = e.file_name().to_string_lossy().into_owned();
        file.starts_with(&format!("{name}.")) && file.ends_with(".so")
    })
}

/// The preload file's text: the fork-safe settings, then `modules`.
pub fn preload_text(modules: &[String]) -> String {
    FORK_SAFE_ENV.iter().map(|s| s.to_string()).chain(modules.iter().cloned()).map(|l| l + "\n").collect()
}

/// Writes the layer's own files into `site`: the resolved set and the
/// preload list (empty when `preload` is off).
pub fn write_meta(site: &Path, set: &ResolvedSet, preload: bool) -> Result<Vec<String>, PackageError> {
    let modules = if preload { top_level_modules(site) } else { Vec::new() };
    let write = |name: &str, text: String| {
        let path = site.join(name);
        fs::write(&path, text).map_err(|source| PackageError::Io { path, source })
    };
    write(SET_FILE, set.text())?;
    write(PRELOAD_FILE, if preload { preload_text(&modules) } else { String::new() })?;
    Ok(modules)
}

/// Makes the erofs image `out` of `site`, with the UUID drawn from the
/// layer's `address` (32 hex digits).
pub fn make_image(site: &Path, out: &Path, address: &str) -> Result<(), PackageError> {
    run(
        Command::new("find").arg(site).args(["-exec", "touch", "-h", "-d", &format!("@{EPOCH}"), "{}", "+"]),
        "fix times",
    )?;
    let uuid = format!(
        "{}-{}-{}-{}-{}",
        &address[0..8],
        &address[8..12],
        &address[12..16],
        &address[16..20],
        &address[20..32]
    );
    let mut mkfs = Command::new("mkfs.erofs");
    mkfs.args(["--quiet", "--all-root", "-x-1", &format!("-T{EPOCH}"), &format!("-U{uuid}")])
        .arg(out)
        .arg(site);
    run(&mut mkfs, "make the erofs image")
}

/// Runs a tool, its stderr in the error when it fails.
fn run(command: &mut Command, step: &'static str) -> Result<(), PackageError> {
    let tool = command.get_program().to_string_lossy().into_owned();
    let out = command.output().map_err(|source| PackageError::Tool { tool: tool.clone(), source })?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    Err(PackageError::Layer { step, detail: format!("{tool}: {} {stderr}", out.status) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_paths_give_top_level_modules() {
        assert_eq!(module_of_record_path("numpy/__init__.py"), Some("numpy".into()));
        assert_eq!(module_of_record_path("six.py"), Some("six".into()));
        assert_eq!(module_of_record_path("six-1.17.0.dist-info/RECORD"), None);
        assert_eq!(module_of_record_path("numpy.libs/libopenblas.so"), None);
        assert_eq!(module_of_record_path("../../bin/f2py"), None);
        assert_eq!(module_of_record_path("README"), None);
    }

    #[test]
    fn modules_come_from_top_level_txt_or_the_record_and_must_exist() {
        let site = tempfile::tempdir().unwrap();
        let s = site.path();
        fs::create_dir_all(s.join("numpy")).unwrap();
        fs::write(s.join("numpy/__init__.py"), "").unwrap();
        fs::write(s.join("six.py"), "").unwrap();
        fs::write(s.join("_cffi_backend.cpython-311-x86_64-linux-gnu.so"), "").unwrap();
        fs::create_dir_all(s.join("numpy-2.1.3.dist-info")).unwrap();
        fs::write(
            s.join("numpy-2.1.3.dist-info/RECORD"),
            "numpy/__init__.py,sha256=x,1\nnumpy.libs/a.so,,\n",
        )
        .unwrap();
        fs::create_dir_all(s.join("six-1.17.0.dist-info")).unwrap();
        fs::write(s.join("six-1.17.0.dist-info/top_level.txt"), "six\nghost\n").unwrap();
        fs::create_dir_all(s.join("cffi-1.0.dist-info")).unwrap();
        fs::write(s.join("cffi-1.0.dist-info/top_level.txt"), "_cffi_backend\n").unwrap();
        assert_eq!(
            top_level_modules(s),
            ["numpy", "six"],
            "ghost is not installed, _cffi_backend is private"
        );
        let text = preload_text(&top_level_modules(s));
        assert!(text.starts_with("OPENBLAS_NUM_THREADS=1\n") && text.ends_with("\nnumpy\nsix\n"), "{text}");
    }
}
