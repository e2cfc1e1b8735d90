//! The init's request handling run in-process on a host: what the `serve`
//! fuzz target drives with arbitrary bytes, and what `cargo test` replays
//! its corpus and crashes through.
//!
//! The port is a pair of pipes and the loop is the init's own
//! ([`Server::round`], as `serve` runs it). Jobs are real processes: `cat`
//! of their code, run as `nobody` when the harness is root, so that
//! spawning, output, stdin, timers and exits take the paths they take in a
//! VM. After each input the host sends a `Ping`: its `Pong` proves the
//! init still serves. What the init sends must always decode as events.
//!
//! Not covered here: the boot duties, cgroups and the zygote (each needs a
//! VM; the VM suites test them) and signals (the harness reaps itself: in
//! a test binary another thread may take SIGCHLD).

extern crate std;

use std::boxed::Box;
use std::collections::BTreeSet;
use std::sync::Mutex;
use std::vec::Vec;

use proto::{Event, Frame, FrameReader, MAX_FRAME, Request};
use rustix::fd::OwnedFd;
use rustix::io::Errno;
use rustix::pipe::PipeFlags;
use rustix::time::Timespec;

use super::{EVENTS, Server};
use crate::config::{Config, JobConfig};
use crate::poll::Token;
use crate::port;
use crate::sys::{self, SigSet, Signal};

/// The sequence number of the `Ping` that follows each input.
pub const LAST_PING: u32 = 0x7e57_0001;

/// Rounds of the loop one input may take, each waiting at most
/// [`ROUND_NS`] for something to be ready: about a second in all, for the
/// input's jobs to end. A `Pong` that has not come by then is a hang.
const ROUNDS: usize = 200;
const ROUND_NS: i64 = 5_000_000;

/// Where the jobs run: `cat` prints their code, so their output is known.
const JOBS: JobConfig = JobConfig {
    python: c"/bin/cat",
    shell: c"/bin/cat",
    home: c"/",
    uid: 65534,
    private: false,
    zygote: c"",
};

/// The init's side, and the host's ends of the port.
struct Harness {
    server: Server,
    to_init: OwnedFd,
    from_init: OwnedFd,
    reader: Box<FrameReader<MAX_FRAME>>,
}

/// One harness per process: the init's buffers are static.
static HARNESS: Mutex<Option<Harness>> = Mutex::new(None);

/// What the init sent for one input.
#[derive(Default)]
pub struct Answer {
    /// The postcard bytes of each event, in order.
    pub events: Vec<Vec<u8>>,
    /// The init stopped serving (the input asked it to shut down).
    pub stopped: bool,
}

/// Feeds `input` to the init as bytes from the host, then a `Ping`, and
/// runs the loop until it has answered and the jobs started have ended.
/// Panics if the init panics, sends what does not decode as an event,
/// reports a job's end twice or never started, or stops answering.
pub fn run(input: &[u8]) -> Answer {
    let mut harness = HARNESS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let harness = harness.get_or_insert_with(Harness::new);
    // Every signal held back, as the init holds back its own: a job's
    // process inherits the mask, so that a signal sent to it (`Signal`)
    // arrives once it has reset the dispositions, not in this process's
    // handlers (libFuzzer's) still installed right after fork. A job's
    // stdin pipe closed under the init is then EPIPE, not SIGPIPE.
    let all = (1..=64).filter_map(Signal::new).fold(SigSet::EMPTY, SigSet::with);
    sys::set_signal_mask(all).expect("sigprocmask");
    harness.reset();
    let mut stream = input.to_vec();
    // Ends a frame the input left open, so that the Ping is one.
    stream.push(0);
    let mut ping = [0u8; 32];
    stream.extend_from_slice(proto::encode(&Request::Ping { seq: LAST_PING }, &mut ping).expect("ping"));
    harness.feed(&stream)
}

impl Harness {
    fn new() -> Harness {
        let config = Config { boot: false, port: None, jobs: JOBS };
        let (rx, to_init) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK).expect("pipe");
        let (from_init, tx) =
            rustix::pipe::pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK).expect("pipe");
        let (rx, tx) = port::on_fds(rx, tx).expect("port");
        let server = Server::on_port(&config, false, rx, tx).expect("server");
        Harness { server, to_init, from_init, reader: Box::new(FrameReader::new()) }
    }

    /// Back to a fresh init: no job, nothing read or queued on either side.
    fn reset(&mut self) {
        let server = &mut self.server;
        server.jobs.forget_all();
        server.rx.forget();
        server.tx.forget();
        let mut sink = [0u8; 4096];
        while let Ok(1..) = rustix::io::read(&server.rx.fd, &mut sink) {}
        while let Ok(1..) = rustix::io::read(&self.from_init, &mut sink) {}
        *self.reader = FrameReader::new();
        server.taking = true;
        let _ = server.poll.set(&server.rx.fd, Token::PortRx, true);
        server.reap_children();
    }

    fn feed(&mut self, stream: &[u8]) -> Answer {
        let mut events = [core::mem::MaybeUninit::uninit(); EVENTS];
        let mut rest = stream;
        let mut answer = Answer::default();
        let mut running = BTreeSet::new();
        let mut answered = false;
        let wait = Timespec { tv_sec: 0, tv_nsec: ROUND_NS };
        for _ in 0..ROUNDS {
            while !rest.is_empty() {
                match rustix::io::write(&self.to_init, rest) {
                    Ok(n) => rest = &rest[n..],
                    Err(Errno::AGAIN) => break,
                    Err(e) => panic!("writing to the init: {e}"),
                }
            }
            let stop = self.server.round(&mut events, Some(&wait)).is_err();
            self.server.reap_children();
            answered |= self.collect(&mut answer, &mut running);
            if stop {
                answer.stopped = true;
                return answer;
            }
            if answered && running.is_empty() {
                return answer;
            }
        }
        assert!(answered, "no Pong for the Ping after the input: the init stopped answering");
        answer
    }

    /// Reads what the init sent and checks it; true once the last `Pong`
    /// came.
    fn collect(&mut self, answer: &mut Answer, running: &mut BTreeSet<u32>) -> bool {
        let mut answered = false;
        let mut buf = [0u8; 4096];
        loop {
            let n = match rustix::io::read(&self.from_init, &mut buf) {
                Ok(n) => n,
                Err(Errno::AGAIN) => return answered,
                Err(e) => panic!("reading from the init: {e}"),
            };
            let mut input = &buf[..n];
            while !input.is_empty() {
                let (used, frame) = self.reader.push(input);
                input = &input[used..];
                let bytes = match frame {
                    None => continue,
                    Some(Frame::Message(bytes)) => bytes,
                    Some(other) => panic!("the init sent a bad frame: {other:?}"),
                };
                let event = proto::decode::<Event<'_>>(bytes)
                    .unwrap_or_else(|e| panic!("the init sent what is not an event ({e}): {bytes:02x?}"));
                match event {
                    Event::Started { job, .. } => assert!(running.insert(job), "job {job} started twice"),
                    Event::Exited(exited) => {
                        assert!(running.remove(&exited.job), "job {} ended but was not running", exited.job)
                    }
                    Event::Output { job, .. } => {
                        assert!(running.contains(&job), "output of job {job}, not running")
                    }
                    Event::Pong { seq: LAST_PING, .. } => answered = true,
                    _ => {}
                }
                answer.events.push(bytes.to_vec());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::vec;

    use proto::{ErrorKind, Exit, Lang, Run, Stream};

    use super::*;

    fn frames(requests: &[Request<'_>]) -> Vec<u8> {
        let mut out = Vec::new();
        for request in requests {
            let mut buf = vec![0u8; MAX_FRAME];
            out.extend_from_slice(proto::encode(request, &mut buf).unwrap());
        }
        out
    }

    fn run_header(job: u32, lang: Lang, code: &[u8]) -> Run<'static> {
        Run {
            job,
            lang,
            code_len: u32::try_from(code.len()).unwrap(),
            env: heapless::Vec::new(),
            cwd: None,
            timeout_ms: 0,
            stdout_limit: 1 << 20,
            stderr_limit: 1 << 20,
            fresh: false,
            stdin: false,
            memory_limit_mb: 0,
            user: None,
        }
    }

    fn events(answer: &Answer) -> Vec<Event<'_>> {
        answer.events.iter().map(|bytes| proto::decode(bytes).unwrap()).collect()
    }

    /// Inputs that reach each request's handling: the corpus grew from
    /// them.
    fn seeds() -> Vec<Vec<u8>> {
        let code = b"print('hello')\n";
        let python = run_header(1, Lang::Python, code);
        let mut shell = run_header(2, Lang::Shell, b"#!/bin/cat\n");
        shell.stdin = true;
        shell.timeout_ms = 50;
        vec![
            // A Python job (cat prints its code).
            frames(&[Request::Run(python.clone()), Request::Code { job: 1, data: code }]),
            // A `#!` script with stdin and a timeout, then a signal.
            frames(&[
                Request::Run(shell),
                Request::Code { job: 2, data: b"#!/bin/cat\n" },
                Request::Stdin { job: 2, data: b"in", end: true },
                Request::Signal { job: 2, signal: 9 },
            ]),
            frames(&[Request::Ping { seq: 7 }, Request::Refresh { seq: 8, realtime_ns: 1, entropy: b"e" }]),
            frames(&[Request::Run(python), Request::Shutdown]),
            // The two bytes that once crashed PID 1: an empty message.
            vec![0x01, 0x00],
        ]
    }

    #[test]
    fn a_job_runs_and_its_output_comes_back() {
        let input = &seeds()[0];
        let answer = run(input);
        let events = events(&answer);
        assert!(matches!(events[0], Event::Started { job: 1, .. }), "{events:?}");
        let out: Vec<u8> = events
            .iter()
            .filter_map(|e| match e {
                Event::Output { job: 1, stream: Stream::Stdout, data } => Some(*data),
                _ => None,
            })
            .flatten()
            .copied()
            .collect();
        assert_eq!(out, b"print('hello')\n");
        let exit = events.iter().find_map(|e| match e {
            Event::Exited(x) => Some(x.exit),
            _ => None,
        });
        assert_eq!(exit, Some(Exit::Code(0)));
        assert!(events.iter().any(|e| matches!(e, Event::Pong { seq: LAST_PING, .. })));
    }

    #[test]
    fn each_input_starts_from_a_fresh_init() {
        // A job left loading by one input is gone for the next.
        let header = frames(&[Request::Run(run_header(5, Lang::Python, b"x"))]);
        for _ in 0..2 {
            let answer = run(&header);
            let events = events(&answer);
            assert!(!events.iter().any(|e| matches!(e, Event::Error { .. })), "{events:?}");
        }
    }

    #[test]
    fn the_two_byte_frame_is_refused_and_serving_goes_on() {
        let answer = run(&[0x01, 0x00]);
        let events = events(&answer);
        assert!(
            matches!(events[0], Event::Error { job: None, kind: ErrorKind::Malformed, .. }),
            "{events:?}"
        );
        assert!(matches!(events.last(), Some(Event::Pong { seq: LAST_PING, .. })));
    }

    #[test]
    fn shutdown_stops_the_loop() {
        let answer = run(&seeds()[3]);
        assert!(answer.stopped);
    }

    fn fuzz_dir(kind: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz").join(kind).join("serve")
    }

    /// The seeds, the fuzzer's corpus and every crash it found, replayed on
    /// stable.
    #[test]
    fn fuzz_corpus_and_crashes_replay() {
        for input in seeds() {
            run(&input);
        }
        let mut replayed = 0;
        for kind in ["corpus", "artifacts"] {
            let Ok(dir) = std::fs::read_dir(fuzz_dir(kind)) else { continue };
            for entry in dir {
                let path = entry.unwrap().path();
                // A fuzzer running beside the test replaces corpus files.
                let input = match std::fs::read(&path) {
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    read => read.unwrap(),
                };
                run(&input);
                replayed += 1;
            }
        }
        assert!(replayed > 0, "the corpus in fuzz/corpus/serve is missing");
    }
}
