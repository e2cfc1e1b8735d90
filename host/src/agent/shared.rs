//! The shared transport: one owner thread per VM reads the connection and
//! routes each event to the channel of the job it is about, so any number
//! of threads (a server's request handlers) run jobs in one VM at once, each
//! with an owned [`JobHandle`]. A job's channel is bounded: a job whose
//! waiter stopped reading is dropped and told so, never buffered without
//! end. Writes take a lock; each is whole frames.

use std::collections::{BTreeSet, HashMap};
use std::io::{ErrorKind as IoKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use proto::{Request, Stats, Stream};

use super::core::{self, Collector, Decoder, Encoder, StdinFeed};
use super::types::{GuestEvent, Job, Outcome, Runner, Signal};
use crate::error::AgentError;

type Result<T> = std::result::Result<T, AgentError>;

/// Events a job's channel holds before the job counts as unread and is
/// dropped: its whole output at full chunks is 32 per MiB, so only a
/// waiter that stopped reading meets this.
pub const JOB_CHANNEL: usize = 4096;

/// How long a job may go past its own timeout before its waiter gives up
/// on the guest: the init reports a timeout within milliseconds, so this
/// only ends waits on a guest that stopped answering.
pub const GUEST_MARGIN: Duration = Duration::from_secs(60);

/// How long a ping may wait for its pong.
pub const PING_TIMEOUT: Duration = Duration::from_secs(10);

type Sink = SyncSender<GuestEvent>;

/// Who waits for what. Held by the owner thread and every handle.
#[derive(Default)]
struct Routes {
    jobs: HashMap<u32, Sink>,
    pongs: HashMap<u32, Sink>,
    /// Jobs whose channel filled up: dropped, and told so.
    dropped: BTreeSet<u32>,
    /// Why the connection ended, once it has.
    closed: Option<String>,
}

struct Inner {
    writer: Mutex<UnixStream>,
    encoder: Mutex<Encoder>,
    routes: Arc<Mutex<Routes>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The owner thread's read ends, and so does the thread.
        if let Ok(writer) = self.writer.lock() {
            let _ = writer.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// A connection to one init, shared by cheap clones.
#[derive(Clone)]
pub struct Shared {
    inner: Arc<Inner>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking holder leaves data that is still whole (each update is
    // one insert or remove).
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    /// Starts the owner thread on `stream`, with ids continuing `encoder`'s.
    pub(crate) fn start(stream: UnixStream, encoder: Encoder) -> Shared {
        let routes = Arc::new(Mutex::new(Routes::default()));
        let reader = stream.try_clone();
        let _ = stream.set_read_timeout(None);
        match reader {
            Ok(reader) => {
                let owned = Arc::clone(&routes);
                let started =
                    std::thread::Builder::new().name("vm-agent".into()).spawn(move || route(reader, &owned));
                if let Err(e) = started {
                    lock(&routes).closed = Some(format!("cannot start the agent thread: {e}"));
                }
            }
            Err(e) => lock(&routes).closed = Some(format!("cannot clone the agent socket: {e}")),
        }
        let inner = Inner { writer: Mutex::new(stream), encoder: Mutex::new(encoder), routes };
        Shared { inner: Arc::new(inner) }
    }

    fn send_frames(&self, frames: &[u8]) -> Result<()> {
        lock(&self.inner.writer).write_all(frames).map_err(AgentError::Send)
    }

    fn send(&self, request: &Request<'_>) -> Result<()> {
        self.send_frames(&core::frame(request)?)
    }

    /// Whether the connection has ended (the guest powered off or died).
    pub fn is_closed(&self) -> bool {
        lock(&self.inner.routes).closed.is_some()
    }

    /// Sends a job without waiting; its events come to the handle.
    pub fn submit(&self, job: &Job) -> Result<JobHandle> {
        self.submit_with(job, job.stdin.is_some())
    }

    /// [`Shared::submit`] for a job whose stdin the caller streams with
    /// [`JobHandle::stdin`].
    pub fn submit_streaming(&self, job: &Job) -> Result<JobHandle> {
        self.submit_with(job, true)
    }

    fn submit_with(&self, job: &Job, stdin: bool) -> Result<JobHandle> {
        let (id, user) = {
            let mut encoder = lock(&self.inner.encoder);
            let id = encoder.job_id();
            (id, encoder.user(id, job))
        };
        let frames = core::job_frames(id, job, stdin, user)?;
        let (sink, events) = mpsc::sync_channel(JOB_CHANNEL);
        {
            let mut routes = lock(&self.inner.routes);
            if routes.closed.is_some() {
                return Err(AgentError::Closed);
            }
            routes.dropped.remove(&id);
            routes.jobs.insert(id, sink);
        }
        let handle = JobHandle { id, user, shared: self.clone(), events };
        self.send_frames(&frames)?;
        Ok(handle)
    }

    /// Runs a job to its end, its stdin (if any) fed as the init takes it;
    /// gives up on a guest silent for the job's timeout plus
    /// [`GUEST_MARGIN`].
    pub fn run(&self, job: &Job, on_output: &mut dyn FnMut(Stream, &[u8])) -> Result<Outcome> {
        let handle = self.submit(job)?;
        let patience = job.timeout.map(|t| t + GUEST_MARGIN);
        handle.finish(job.stdin.as_deref(), patience, on_output)
    }

    /// A guest user no job of this connection had (see
    /// [`Agent::new_user`](super::Agent::new_user)).
    pub fn new_user(&self) -> u32 {
        lock(&self.inner.encoder).new_user()
    }

    /// Round trip: the init's counters, or an error within `timeout`.
    pub fn ping(&self, timeout: Duration) -> Result<Stats> {
        let seq = lock(&self.inner.encoder).seq();
        let (sink, pong) = mpsc::sync_channel(1);
        {
            let mut routes = lock(&self.inner.routes);
            if routes.closed.is_some() {
                return Err(AgentError::Closed);
            }
            routes.pongs.insert(seq, sink);
        }
        let sent = self.send(&Request::Ping { seq });
        let answer = sent.and_then(|()| match pong.recv_timeout(timeout) {
            Ok(GuestEvent::Pong { stats, .. }) => Ok(stats),
            Ok(_) => Err(AgentError::Closed),
            Err(RecvTimeoutError::Timeout) => Err(AgentError::Timeout(timeout)),
            Err(RecvTimeoutError::Disconnected) => Err(AgentError::Closed),
        });
        lock(&self.inner.routes).pongs.remove(&seq);
        answer
    }

    /// Sends a signal to a job's process group.
    pub fn signal(&self, job: u32, signal: Signal) -> Result<()> {
        self.send(&Request::Signal { job, signal: signal.number() })
    }

    /// Asks the guest to power off.
    pub fn shutdown(&self) -> Result<()> {
        self.send(&Request::Shutdown)
    }
}

impl Runner for Shared {
    fn run_job(&mut self, job: &Job, on_output: &mut dyn FnMut(Stream, &[u8])) -> Result<Outcome> {
        self.run(job, on_output)
    }

    fn files_user(&mut self) -> u32 {
        lock(&self.inner.encoder).files_user()
    }
}

/// The owner thread: reads events and hands each to its waiter.
fn route(mut stream: UnixStream, routes: &Mutex<Routes>) {
    let mut decoder = Decoder::default();
    let mut buf = vec![0; proto::MAX_FRAME];
    let why = loop {
        match stream.read(&mut buf) {
            Ok(0) => break "the guest closed the agent connection".to_owned(),
            Ok(n) => decoder.push(&buf[..n]),
            Err(e) if e.kind() == IoKind::Interrupted => continue,
            Err(e) => break format!("failed to read from the guest: {e}"),
        }
        while let Some(event) = decoder.next_event() {
            // A frame that is not an event is the guest's fault, not any
            // one job's: the others go on (the init is fuzzed never to
            // send one).
            let Ok(event) = event else { continue };
            deliver(&mut lock(routes), event);
        }
    };
    let mut routes = lock(routes);
    routes.closed = Some(why);
    // Every waiter's channel disconnects: they see the end.
    routes.jobs.clear();
    routes.pongs.clear();
}

fn deliver(routes: &mut Routes, event: GuestEvent) {
    let sink = match &event {
        GuestEvent::Pong { seq, .. } => routes.pongs.remove(seq),
        _ => match event.job() {
            Some(job) => routes.jobs.get(&job).cloned(),
            // Ready (already taken at boot) and errors about no job.
            None => None,
        },
    };
    let Some(sink) = sink else { return };
    let job = event.job();
    let ends = matches!(event, GuestEvent::Exited(_) | GuestEvent::Error { .. });
    match sink.try_send(event) {
        Ok(()) if ends => {
            if let Some(job) = job {
                routes.jobs.remove(&job);
            }
        }
        Ok(()) => {}
        Err(TrySendError::Full(_)) => {
            if let Some(job) = job {
                routes.jobs.remove(&job);
                routes.dropped.insert(job);
            }
        }
        // The waiter is gone: later events of the job have no one.
        Err(TrySendError::Disconnected(_)) => {
            if let Some(job) = job {
                routes.jobs.remove(&job);
            }
        }
    }
}

/// One submitted job's events, owned by whoever waits for it.
pub struct JobHandle {
    id: u32,
    /// The guest user it runs as (its key).
    user: u32,
    shared: Shared,
    events: Receiver<GuestEvent>,
}

impl JobHandle {
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The key of the guest user it runs as: a [`Job::user`] for jobs
    /// that are to share it.
    pub fn user(&self) -> u32 {
        self.user
    }

    /// The connection it runs on.
    pub fn shared(&self) -> &Shared {
        &self.shared
    }

    /// The job's next event, waiting at most `wait` (`None`: as long as it
    /// takes); `Ok(None)` when none came in time.
    pub fn next(&self, wait: Option<Duration>) -> Result<Option<GuestEvent>> {
        let received = match wait {
            Some(wait) => self.events.recv_timeout(wait),
            None => self.events.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match received {
            Ok(event) => Ok(Some(event)),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => Err(self.why_gone()),
        }
    }

    fn why_gone(&self) -> AgentError {
        let routes = lock(&self.shared.inner.routes);
        match routes.dropped.contains(&self.id) {
            true => AgentError::Dropped(self.id),
            false => AgentError::Closed,
        }
    }

    /// Sends the next piece of the job's stdin (`end`: end of file after it).
    pub fn stdin(&self, data: &[u8], end: bool) -> Result<()> {
        self.shared.send(&Request::Stdin { job: self.id, data, end })
    }

    pub fn signal(&self, signal: Signal) -> Result<()> {
        self.shared.signal(self.id, signal)
    }

    /// Feeds `stdin` (if any) and collects the job's events to its end; a
    /// guest silent for `patience` is given up on.
    pub fn finish(
        self,
        stdin: Option<&[u8]>,
        patience: Option<Duration>,
        on_output: &mut dyn FnMut(Stream, &[u8]),
    ) -> Result<Outcome> {
        let mut feed = StdinFeed::default();
        if let Some(bytes) = stdin {
            feed.give(bytes.to_vec());
            feed.end_input();
        }
        let mut collector = Collector::default();
        loop {
            if stdin.is_some() {
                while let Some((data, end)) = feed.next_piece() {
                    self.stdin(&data, end)?;
                }
            }
            let asked = Instant::now();
            let Some(event) = self.next(patience)? else {
                return Err(AgentError::Timeout(asked.elapsed()));
            };
            if let GuestEvent::StdinTaken { bytes, .. } = event {
                feed.taken(bytes);
            } else if let Some(outcome) = collector.take(event, on_output)? {
                return Ok(outcome);
            }
        }
    }
}

impl Drop for JobHandle {
    fn drop(&mut self) {
        let mut routes = lock(&self.shared.inner.routes);
        routes.jobs.remove(&self.id);
        routes.dropped.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use proto::{Event, Exit, Exited};

    use super::*;

    /// The init's side of a socketpair, played by the test.
    fn pair() -> (Shared, UnixStream) {
        let (host, guest) = UnixStream::pair().unwrap();
        guest.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        (Shared::start(host, Encoder::default()), guest)
    }

    fn send(guest: &mut UnixStream, event: &Event<'_>) {
        guest.write_all(&postcard::to_stdvec_cobs(event).unwrap()).unwrap();
    }

    fn exited(job: u32, code: u8) -> Event<'static> {
        Event::Exited(Exited {
            job,
            exit: Exit::Code(code),
            timed_out: false,
            stdout_truncated: false,
            stderr_truncated: false,
            duration_us: 1,
            peak_memory: 0,
            cpu_us: 0,
        })
    }

    /// Reads requests until one `Run` header has come, returning its job id.
    fn read_run(guest: &mut UnixStream) -> u32 {
        let mut decoder = Vec::new();
        let mut byte = [0u8; 1];
        loop {
            guest.read_exact(&mut byte).unwrap();
            decoder.push(byte[0]);
            if byte[0] == 0 {
                let mut frame = std::mem::take(&mut decoder);
                if let Ok(Request::Run(run)) = postcard::from_bytes_cobs::<Request<'_>>(&mut frame) {
                    return run.job;
                }
            }
        }
    }

    #[test]
    fn each_job_gets_only_its_own_events_across_threads() {
        let (shared, mut guest) = pair();
        let a = shared.submit(&Job::shell("a")).unwrap();
        let b = shared.submit(&Job::shell("b")).unwrap();
        let (ia, ib) = (read_run(&mut guest), read_run(&mut guest));
        assert_eq!((a.id(), b.id()), (ia, ib));
        let waiter = std::thread::spawn(move || b.finish(None, Some(Duration::from_secs(5)), &mut |_, _| {}));
        send(&mut guest, &Event::Output { job: ib, stream: Stream::Stdout, data: b"for b" });
        send(&mut guest, &Event::Output { job: ia, stream: Stream::Stdout, data: b"for a" });
        send(&mut guest, &exited(ib, 4));
        send(&mut guest, &exited(ia, 0));
        let b = waiter.join().unwrap().unwrap();
        assert_eq!((b.code(), &b.stdout[..]), (4, &b"for b"[..]));
        let a = a.finish(None, Some(Duration::from_secs(5)), &mut |_, _| {}).unwrap();
        assert_eq!((a.code(), &a.stdout[..]), (0, &b"for a"[..]));
    }

    #[test]
    fn a_job_nobody_reads_is_dropped_and_its_waiter_told() {
        let (shared, mut guest) = pair();
        let job = shared.submit(&Job::shell("flood")).unwrap();
        let id = read_run(&mut guest);
        for _ in 0..JOB_CHANNEL + 10 {
            send(&mut guest, &Event::Output { job: id, stream: Stream::Stdout, data: b"x" });
        }
        // The pong comes after the flood on the wire: once it is back, the
        // owner thread has routed every output event.
        let pinger = std::thread::spawn({
            let shared = shared.clone();
            move || shared.ping(Duration::from_secs(5))
        });
        // The job's code frame comes first on the wire, then the ping.
        let seq = loop {
            let mut request = Vec::new();
            let mut byte = [0u8; 1];
            while request.last() != Some(&0) {
                guest.read_exact(&mut byte).unwrap();
                request.push(byte[0]);
            }
            if let Ok(Request::Ping { seq }) = postcard::from_bytes_cobs::<Request<'_>>(&mut request) {
                break seq;
            }
        };
        send(&mut guest, &Event::Pong { seq, stats: Default::default() });
        pinger.join().unwrap().unwrap();
        let mut outcome = Ok(None);
        for _ in 0..=JOB_CHANNEL {
            outcome = job.next(Some(Duration::from_secs(1)));
            if outcome.is_err() {
                break;
            }
        }
        assert!(matches!(outcome, Err(AgentError::Dropped(j)) if j == id), "{outcome:?}");
    }

    #[test]
    fn a_closed_connection_ends_every_wait() {
        let (shared, guest) = pair();
        let job = shared.submit(&Job::shell("sleep 100")).unwrap();
        drop(guest);
        assert!(matches!(job.next(Some(Duration::from_secs(5))), Err(AgentError::Closed)));
        assert!(matches!(shared.ping(Duration::from_secs(5)), Err(AgentError::Closed)));
        assert!(shared.is_closed());
        assert!(matches!(shared.submit(&Job::shell("true")), Err(AgentError::Closed)));
    }

    #[test]
    fn a_silent_guest_times_a_ping_out() {
        let (shared, _guest) = pair();
        assert!(matches!(shared.ping(Duration::from_millis(50)), Err(AgentError::Timeout(_))));
    }
}
