//! Bad input never runs anything and never takes the init down: each gets an
//! error frame, and the next request is served.

mod common;

use common::{Init, Mode, text};
use proto::{ErrorKind, Lang};
use vmhost::{AgentError, GuestEvent, Job};

fn refused(init: &mut Init, job: &Job) -> (ErrorKind, String) {
    match init.agent.run(job, |_, _| {}) {
        Err(AgentError::Refused { kind, message }) => (kind, message),
        other => panic!("expected a refusal for {job:?}, got {other:?}"),
    }
}

fn next_error(init: &mut Init) -> (Option<u32>, ErrorKind, String) {
    match init.agent.next_event().unwrap() {
        GuestEvent::Error { job, kind, message } => (job, kind, message),
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn invalid_jobs_are_refused_by_field_and_nothing_runs() {
    let mut init = Init::start(Mode::Subreaper);
    let with_env = |name: &str, value: &str| {
        let mut job = Job::shell("echo should not run");
        job.env = vec![(name.into(), value.into())];
        job
    };
    let cases: Vec<(Job, &str)> = vec![
        (Job::python(""), "code: empty"),
        (Job::python(" \n\t  \n"), "code: only whitespace"),
        (Job::shell("echo a\0b"), "code: contains a NUL byte at offset 6"),
        (with_env("", "x"), "env[0].name: empty"),
        (with_env("A=B", "x"), "env[0].name: contains '='"),
        (with_env("A\0", "x"), "env[0].name: contains a NUL byte"),
        (with_env("A", "x\0y"), "env[0].value: contains a NUL byte"),
        (Job::new(Lang::Unknown(7), "print(1)"), "lang: unknown language 7"),
        (Job { cwd: Some("/nonexistent/dir".into()), ..Job::shell("pwd") }, "cwd: no such directory"),
        (Job { cwd: Some("".into()), ..Job::shell("pwd") }, "cwd: empty"),
    ];
    for (job, want) in cases {
        let (kind, message) = refused(&mut init, &job);
        assert_eq!(kind, ErrorKind::InvalidJob, "{want}");
        assert!(message.starts_with(want), "got {message:?}, want {want:?}");
    }
    let stats = init.agent.ping().unwrap();
    assert_eq!((stats.jobs_started, stats.jobs_active), (0, 0), "nothing ran, no slot leaked");
    assert_eq!(text(&init.shell("echo fine").stdout), "fine\n");
}

#[test]
fn malformed_oversize_and_unknown_frames_get_errors() {
    let mut init = Init::start(Mode::Subreaper);
    // Not valid COBS.
    init.agent.send_raw(&[0x09, 0x41, 0x42, 0x00]).unwrap();
    assert_eq!(next_error(&mut init).1, ErrorKind::Malformed);
    // Valid COBS, not a request: tag 0 (Run) and nothing else.
    init.agent.send_raw(&[0x01, 0x01, 0x00]).unwrap();
    assert_eq!(next_error(&mut init).1, ErrorKind::Malformed);
    // Valid COBS for an empty message: no tag at all (this once panicked
    // PID 1 in its unknown-tag check).
    init.agent.send_raw(&[0x01, 0x00]).unwrap();
    assert_eq!(next_error(&mut init).1, ErrorKind::Malformed);
    // A tag from a newer host.
    init.agent.send_raw(&[0x03, 0x09, 0x01, 0x00]).unwrap();
    assert_eq!(next_error(&mut init).1, ErrorKind::UnknownMessage);
    // Longer than MAX_FRAME, then garbage, then a good ping.
    let mut big = vec![0x41u8; proto::MAX_FRAME + 10];
    big.push(0);
    init.agent.send_raw(&big).unwrap();
    assert_eq!(next_error(&mut init).1, ErrorKind::Oversize);
    init.agent.send_raw(&[0, 0, 0]).unwrap();
    assert_eq!(init.agent.ping().unwrap().jobs_started, 0);
    assert_eq!(text(&init.python("print('alive')").stdout), "alive\n");
}

#[test]
fn unknown_duplicate_and_overflowing_jobs() {
    let mut init = Init::start(Mode::Subreaper);
    init.agent.send(&proto::Request::Code { job: 77, data: b"x" }).unwrap();
    assert_eq!(next_error(&mut init), (Some(77), ErrorKind::UnknownJob, "no job with this id".into()));
    init.agent.signal(78, 9).unwrap();
    assert_eq!(next_error(&mut init).1, ErrorKind::UnknownJob);

    // Fill every slot with a job that waits, then one more.
    let mut ids = Vec::new();
    for _ in 0..16 {
        let mut job = Job::shell("sleep 30");
        job.timeout = None;
        ids.push(init.agent.submit(&job).unwrap());
    }
    // A refused header's code chunks are refused too: the running job with
    // that id does not take them, and an id that never opened is unknown.
    init.agent.submit_as(ids[0], &Job::shell("echo dup")).unwrap();
    assert_eq!(next_error_for(&mut init, ids[0]), ErrorKind::DuplicateJob);
    assert_eq!(next_error_for(&mut init, ids[0]), ErrorKind::InvalidJob);
    let extra = init.agent.submit(&Job::shell("echo one too many")).unwrap();
    assert_eq!(next_error_for(&mut init, extra), ErrorKind::Busy);
    assert_eq!(next_error_for(&mut init, extra), ErrorKind::UnknownJob);
    for &id in &ids {
        init.agent.signal(id, 9).unwrap();
    }
    for id in ids {
        assert_eq!(init.agent.wait_job(id, &mut |_, _| {}).unwrap().code(), 137);
    }
    assert_eq!(text(&init.shell("echo room again").stdout), "room again\n");
}

#[test]
fn code_longer_than_announced_is_refused() {
    let mut init = Init::start(Mode::Subreaper);
    let job = Job::shell("echo hi");
    init.agent.submit_as(5, &job).unwrap();
    // The job already has its 7 bytes and started; more code is refused.
    init.agent.send(&proto::Request::Code { job: 5, data: b"more" }).unwrap();
    let err = init.agent.next_event_for(|e| matches!(e, GuestEvent::Error { .. })).unwrap();
    assert!(matches!(err, GuestEvent::Error { job: Some(5), kind: ErrorKind::InvalidJob, .. }), "{err:?}");
    assert_eq!(text(&init.agent.wait_job(5, &mut |_, _| {}).unwrap().stdout), "hi\n");
}

fn next_error_for(init: &mut Init, id: u32) -> ErrorKind {
    match init
        .agent
        .next_event_for(|e| matches!(e, GuestEvent::Error { job: Some(j), .. } if *j == id))
        .unwrap()
    {
        GuestEvent::Error { kind, .. } => kind,
        _ => unreachable!(),
    }
}

#[test]
fn refresh_outside_a_vm_is_refused() {
    // The host's clock and random pool are not the init's to set.
    let mut init = Init::start(Mode::Subreaper);
    init.agent.send(&proto::Request::Refresh { seq: 3, realtime_ns: 1, entropy: &[7; 32] }).unwrap();
    let (job, kind, message) = next_error(&mut init);
    assert_eq!((job, kind), (None, ErrorKind::Refresh));
    assert!(message.starts_with("refresh: not in a VM"), "{message}");
    assert_eq!(text(&init.shell("echo fine").stdout), "fine\n");
}
