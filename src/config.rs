//! The init's settings, from its command line.
//!
//! Flags come from argv (tests, debugging). In a VM the host sets them on the
//! kernel command line as `pid1_boot=1` and `pid1_port=/dev/vport2p1`: the kernel
//! hands `name=value` parameters it does not know to the init as environment
//! variables. (Arguments after `--` would reach argv too, but QEMU appends
//! its own `virtio_mmio.device=` parameters after them.)

use core::ffi::CStr;

/// What the init was asked to be.
pub struct Config {
    /// Perform the PID-1 boot duties (mounts, device nodes, power-off).
    /// Only a VM asks for this: being PID 1 is not proof of being in one.
    pub boot: bool,
    /// The agent port device; stdin/stdout when `None`.
    pub port: Option<&'static CStr>,
    pub jobs: JobConfig,
}

/// How jobs are run.
#[derive(Clone, Copy)]
pub struct JobConfig {
    pub python: &'static CStr,
    pub shell: &'static CStr,
    /// Home and default working directory of jobs.
    pub home: &'static CStr,
    /// User and group the jobs run as, when the init runs as root; in a
    /// VM, the first of the job users (`job::users`).
    pub uid: u32,
    /// Jobs get users of their own, each with its own home and /tmp (in a
    /// VM, whose image has their directories).
    pub private: bool,
    /// The Python zygote's script; empty: no zygote.
    pub zygote: &'static CStr,
}

/// The port a booted VM serves on: the virtio serial port the host adds
/// (`virtserialport`, not a console port: QEMU drops a console port's
/// bytes when the host reads slowly, and throttles a serial port instead).
/// 2: the third virtio device on the host's QEMU command line (after the
/// disk and the entropy source); port 1: the first that is not a console.
pub const BOOT_PORT: &CStr = c"/dev/vport2p1";

/// The flags that take a value, in the order `parse` matches them.
const FLAGS: [&[u8]; 6] = [b"--port", b"--python", b"--shell", b"--home", b"--zygote", b"--uid"];

pub const USAGE: &str = "usage: pid1 [--boot] [--port DEV] [--python|--shell|--zygote PATH] \
                         [--home DIR] [--uid N]";

impl Config {
    pub fn parse(
        mut args: impl Iterator<Item = &'static CStr>,
        environ: impl Iterator<Item = &'static CStr>,
    ) -> Result<Config, &'static str> {
        let mut config = Config {
            boot: false,
            port: None,
            jobs: JobConfig {
                python: c"/usr/bin/python3",
                shell: c"/bin/bash",
                home: c"/home/user",
                uid: 1000,
                private: false,
                zygote: c"/usr/lib/pid1/zygote.py",
            },
        };
        for var in environ {
            let var = var.to_bytes_with_nul();
            if let Some(value) = var.strip_prefix(b"pid1_boot=") {
                config.boot = value == b"1\0";
            } else if let Some(value) = var.strip_prefix(b"pid1_port=") {
                config.port = crate::log::c_str_until_nul(value);
            }
        }
        while let Some(arg) = args.next() {
            let flag = arg.to_bytes();
            if flag == b"--boot" {
                config.boot = true;
                continue;
            }
            let value = args.next().ok_or("missing value after a flag")?;
            // A table and one comparison loop: a `match` on the names laid
            // out a comparison per name (300 bytes more init).
            let flag = FLAGS.iter().position(|name| *name == flag).ok_or("unknown flag")?;
            let jobs = &mut config.jobs;
            match flag {
                0 => config.port = Some(value),
                1 => jobs.python = value,
                2 => jobs.shell = value,
                3 => jobs.home = value,
                4 => jobs.zygote = value,
                _ => jobs.uid = parse_u32(value.to_bytes()).ok_or("--uid: not a number")?,
            }
        }
        if config.boot && config.port.is_none() {
            config.port = Some(BOOT_PORT);
        }
        config.jobs.private = config.boot;
        Ok(config)
    }
}

fn parse_u32(text: &[u8]) -> Option<u32> {
    if text.is_empty() {
        return None;
    }
    text.iter().try_fold(0u32, |n, &d| {
        d.is_ascii_digit().then_some(())?;
        n.checked_mul(10)?.checked_add(u32::from(d - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&'static CStr]) -> Result<Config, &'static str> {
        Config::parse(args.iter().copied(), [].into_iter())
    }

    #[test]
    fn defaults_and_boot_port() {
        let c = parse(&[]).unwrap();
        assert!(!c.boot && c.port.is_none() && c.jobs.uid == 1000);
        let c = parse(&[c"--boot"]).unwrap();
        assert_eq!(c.port, Some(BOOT_PORT));
        let c = parse(&[c"--uid", c"0", c"--home", c"/tmp/h", c"--python", c"/x"]).unwrap();
        assert_eq!((c.jobs.uid, c.jobs.home, c.jobs.python), (0, c"/tmp/h", c"/x"));
    }

    #[test]
    fn kernel_command_line_environment() {
        let env = [c"HOME=/", c"pid1_boot=1", c"TERM=linux", c"pid1_port=/dev/hvc1"];
        let c = Config::parse([].into_iter(), env.into_iter()).unwrap();
        assert!(c.boot);
        assert_eq!(c.port, Some(c"/dev/hvc1"));
        let c = Config::parse([].into_iter(), [c"pid1_boot=0"].into_iter()).unwrap();
        assert!(!c.boot && c.port.is_none());
    }

    #[test]
    fn bad_flags() {
        assert!(parse(&[c"--uid"]).is_err());
        assert!(parse(&[c"--uid", c"12a"]).is_err());
        assert!(parse(&[c"--uid", c"99999999999"]).is_err());
        assert!(parse(&[c"--frobnicate", c"1"]).is_err());
    }
}
