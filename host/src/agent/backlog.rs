//! Events read while their job's waiter was not asking, kept in arrival
//! order and bounded: a job nobody reads is dropped, not grown without end.

use std::collections::{BTreeSet, VecDeque};

use super::types::GuestEvent;

/// Bytes of events kept for jobs no one is waiting on yet: as much as the
/// largest file a guest hands back (`guest::files::MAX_FILE`), so a caller
/// that reads one job while its neighbours write their whole output loses
/// nothing; past it, the job holding the most is dropped: nobody reads it.
pub const BACKLOG_BYTES: usize = 256 << 20;

/// What an event costs to keep: its data, and a little for the rest.
fn cost(event: &GuestEvent) -> usize {
    64 + match event {
        GuestEvent::Output { data, .. } => data.len(),
        GuestEvent::Error { message, .. } => message.len(),
        _ => 0,
    }
}

/// Job ids whose late stdin answers are ignored (see [`Backlog::stale`]):
/// enough for every job a VM runs at once, several times over.
const STALE_JOBS: usize = 64;

/// Events read while their job's waiter was not asking, in arrival order,
/// bounded (see [`BACKLOG_BYTES`]).
pub struct Backlog {
    events: VecDeque<GuestEvent>,
    /// Bytes kept, by [`cost`], and the most that may be.
    held: usize,
    limit: usize,
    /// Jobs whose events were dropped for want of a reader.
    dropped: BTreeSet<u32>,
    /// Jobs that ended before all their stdin was sent: the init refuses
    /// (`UnknownJob`) what still arrives for them, and those answers are
    /// for no one.
    stale: VecDeque<u32>,
}

impl Default for Backlog {
    fn default() -> Self {
        Backlog::with_limit(BACKLOG_BYTES)
    }
}

impl Backlog {
    pub fn with_limit(limit: usize) -> Self {
        Backlog {
            events: VecDeque::new(),
            held: 0,
            limit: limit.max(1),
            dropped: BTreeSet::new(),
            stale: VecDeque::new(),
        }
    }

    /// Keeps `event` for later; the job dropped to make room, if one was.
    pub fn push(&mut self, event: GuestEvent) -> Option<u32> {
        let job = event.job();
        if job.is_some_and(|j| self.dropped.contains(&j)) || self.is_stale_answer(&event) {
            return None;
        }
        self.held += cost(&event);
        self.events.push_back(event);
        if self.held <= self.limit {
            return None;
        }
        // The job holding the most is the one nobody reads.
        let mut held = std::collections::BTreeMap::<Option<u32>, usize>::new();
        for e in &self.events {
            *held.entry(e.job()).or_default() += cost(e);
        }
        let (&worst, _) = held.iter().max_by_key(|(_, n)| **n)?;
        match worst {
            Some(id) => {
                self.events.retain(|e| e.job() != Some(id));
                self.dropped.insert(id);
                self.held = self.events.iter().map(cost).sum();
                Some(id)
            }
            None => {
                if let Some(e) = self.events.pop_front() {
                    self.held -= cost(&e);
                }
                None
            }
        }
    }

    /// The first kept event `wanted` takes.
    pub fn take(&mut self, wanted: impl Fn(&GuestEvent) -> bool) -> Option<GuestEvent> {
        let i = self.events.iter().position(wanted)?;
        let event = self.events.remove(i)?;
        self.held -= cost(&event);
        Some(event)
    }

    /// The oldest kept event.
    pub fn pop(&mut self) -> Option<GuestEvent> {
        let event = self.events.pop_front()?;
        self.held -= cost(&event);
        Some(event)
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Whether `job`'s events were dropped.
    pub fn was_dropped(&self, job: u32) -> bool {
        self.dropped.contains(&job)
    }

    /// A new job takes `id`: whatever was said of an old job of that id
    /// no longer applies.
    pub fn reuse(&mut self, id: u32) {
        self.dropped.remove(&id);
        self.stale.retain(|&j| j != id);
    }

    /// `job` ended with stdin still to send.
    pub fn mark_stale(&mut self, job: u32) {
        if self.stale.len() == STALE_JOBS {
            self.stale.pop_front();
        }
        self.stale.push_back(job);
    }

    /// An init's refusal of stdin for a job that already ended.
    pub fn is_stale_answer(&self, event: &GuestEvent) -> bool {
        matches!(event, GuestEvent::Error { job: Some(j), kind: proto::ErrorKind::UnknownJob, .. }
            if self.stale.contains(j))
    }
}

#[cfg(test)]
mod tests {
    use proto::{ErrorKind, Stream};

    use super::*;

    fn output(job: u32, stream: Stream, data: &[u8]) -> GuestEvent {
        GuestEvent::Output { job, stream, data: data.to_vec() }
    }

    #[test]
    fn the_backlog_keeps_order_and_hands_out_by_job() {
        let mut backlog = Backlog::default();
        backlog.push(output(1, Stream::Stdout, b"1a"));
        backlog.push(output(2, Stream::Stdout, b"2a"));
        backlog.push(output(1, Stream::Stdout, b"1b"));
        assert_eq!(backlog.take(|e| e.job() == Some(1)), Some(output(1, Stream::Stdout, b"1a")));
        assert_eq!(backlog.pop(), Some(output(2, Stream::Stdout, b"2a")));
        assert_eq!(backlog.take(|e| e.job() == Some(1)), Some(output(1, Stream::Stdout, b"1b")));
        assert!(backlog.is_empty());
    }

    #[test]
    fn a_job_nobody_reads_is_dropped_not_grown() {
        // Room for eight small events.
        let mut backlog = Backlog::with_limit(8 * cost(&output(1, Stream::Stdout, b"flood")));
        backlog.push(output(2, Stream::Stdout, b"kept"));
        let mut dropped = None;
        for _ in 0..20 {
            dropped = dropped.or(backlog.push(output(1, Stream::Stdout, b"flood")));
        }
        assert_eq!(dropped, Some(1));
        assert!(backlog.len() <= 8, "bounded: {}", backlog.len());
        assert!(backlog.held <= backlog.limit);
        assert!(backlog.was_dropped(1) && !backlog.was_dropped(2));
        assert_eq!(backlog.take(|e| e.job() == Some(2)), Some(output(2, Stream::Stdout, b"kept")));
        backlog.reuse(1);
        assert!(!backlog.was_dropped(1));
    }

    #[test]
    fn late_stdin_answers_for_an_ended_job_are_for_no_one() {
        let mut backlog = Backlog::default();
        let late = |job| GuestEvent::Error {
            job: Some(job),
            kind: ErrorKind::UnknownJob,
            message: "no such job".into(),
        };
        backlog.mark_stale(4);
        backlog.mark_stale(5);
        backlog.push(late(4));
        backlog.push(late(5));
        backlog.push(late(6));
        assert_eq!(backlog.len(), 1, "only the job never marked stays");
        assert_eq!(backlog.pop().and_then(|e| e.job()), Some(6));
    }
}
