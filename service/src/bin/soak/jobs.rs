//! What the soak's runs do, each proving by its output that it was its
//! own run: the jobs, the answers they must get, and the nonces in them.

use std::fs;
use std::io::Read as _;

use vmhost::api::{RunResult, base64};

use crate::harness::error::io;
use crate::{Result, SoakError};

/// What a run does; each proves it was its own run by its output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// Python: the nonce and a sum computed from `k`, both in the code.
    PyCompute,
    /// bash: the same with shell arithmetic.
    ShCompute,
    /// Python: the nonce from stdin, reversed; stderr and an exit code.
    PyStdin,
    /// Python: the nonce and `k` from the environment.
    PyEnv,
    /// bash: the nonce in an uploaded file, written to one downloaded.
    ShFiles,
}

pub const KINDS: [Kind; 5] = [Kind::PyCompute, Kind::ShCompute, Kind::PyStdin, Kind::PyEnv, Kind::ShFiles];

/// One run: its request and the answer it must get.
pub struct Job {
    pub kind: Kind,
    pub request: serde_json::Value,
    stdout: String,
    stderr: String,
    exit_code: i32,
    /// A downloaded file's content, base64.
    file: Option<String>,
}

pub fn job(kind: Kind, nonce: &str, k: u64) -> Job {
    use serde_json::json;
    let (request, stdout) = match kind {
        Kind::PyCompute => (
            json!({"language": "python",
                   "code": format!("n = '{nonce}'\nk = {k}\nprint(n, sum(i * i for i in range(k)) % 1000003)")}),
            format!("{nonce} {}\n", (0..k).map(|i| i * i).sum::<u64>() % 1_000_003),
        ),
        Kind::ShCompute => (
            json!({"language": "sh", "code": format!("n={nonce}; k={k}; echo \"$n $(( (k * k + 7) % 1000003 ))\"")}),
            format!("{nonce} {}\n", (k * k + 7) % 1_000_003),
        ),
        Kind::PyStdin => (
            json!({"language": "python", "stdin": nonce,
                   "code": format!("import sys\ns = sys.stdin.read()\nprint(s[::-1], len(s))\nprint(s, file=sys.stderr)\nsys.exit({})", 1 + k % 5)}),
            format!("{} {}\n", nonce.chars().rev().collect::<String>(), nonce.len()),
        ),
        Kind::PyEnv => (
            json!({"language": "python", "env": {"NONCE": nonce, "K": k.to_string()},
                   "code": "import os\nn = os.environ['NONCE']\nk = int(os.environ['K'])\nprint(n, k * 7 + len(n))"}),
            format!("{nonce} {}\n", k * 7 + nonce.len() as u64),
        ),
        Kind::ShFiles => (
            json!({"language": "sh",
                   "files": [{"path": "in.txt", "content": base64(format!("{nonce}\n").as_bytes())}],
                   "download": ["out.txt"],
                   "code": format!("read -r n < in.txt\necho \"$n-{k}\" > out.txt\necho \"$n $(( {k} * 3 ))\"")}),
            format!("{nonce} {}\n", k * 3),
        ),
    };
    Job {
        kind,
        request,
        stdout,
        stderr: if kind == Kind::PyStdin { format!("{nonce}\n") } else { String::new() },
        exit_code: if kind == Kind::PyStdin { i32::try_from(1 + k % 5).expect("small") } else { 0 },
        file: (kind == Kind::ShFiles).then(|| base64(format!("{nonce}-{k}\n").as_bytes())),
    }
}

impl Job {
    pub fn check(&self, result: &RunResult) -> Result<()> {
        let mut wrong = Vec::new();
        if result.stdout != self.stdout {
            wrong.push(format!("stdout {:?}, wanted {:?}", result.stdout, self.stdout));
        }
        if result.stderr != self.stderr {
            wrong.push(format!("stderr {:?}, wanted {:?}", result.stderr, self.stderr));
        }
        if result.exit_code != self.exit_code || result.timed_out {
            wrong.push(format!(
                "exit {} (timed out: {}), wanted {}",
                result.exit_code, result.timed_out, self.exit_code
            ));
        }
        if let Some(file) = &self.file {
            match result.files.as_slice() {
                [got] if got.path == "out.txt" && got.content == *file => {}
                got => wrong.push(format!("files {got:?}, wanted out.txt = {file}")),
            }
        }
        if wrong.is_empty() { Ok(()) } else { Err(SoakError::Wrong(wrong.join("; "))) }
    }
}

/// splitmix64: nonces that no two runs share, from one seed of the kernel's.
pub struct Nonces(u64);

impl Nonces {
    pub fn new() -> Result<Nonces> {
        let mut seed = [0u8; 8];
        fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut seed))
            .map_err(io("reading /dev/urandom"))?;
        Ok(Nonces(u64::from_le_bytes(seed)))
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}
