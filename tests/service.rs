//! The sandbox service (`vmexec serve`) as its clients see it, against real
//! VMs: runs, streams, files and sessions; bad input refused before any VM
//! is touched; the token on TCP; a client that hangs up, a QEMU that dies,
//! a dead VM in the pool, a full queue; and a SIGTERM that lets a running
//! job finish within the grace and leaves nothing.
//! Needs `vmexec` (`just build`) and the guest image (`just image`).
//!
//! The functional tests share one service. A test that counts QEMUs, kills
//! them or fills the queue has a service of its own, so that what it counts
//! is its own doing.

use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use common::service::{Call, Service, Streaming, exists, qemus_naming, refused_start};
use rustix::process::{Signal, kill_process};
use serde_json::{Value, json};

/// The service the functional tests share: one warm VM is enough for them.
fn shared() -> &'static Service {
    static SHARED: OnceLock<Service> = OnceLock::new();
    SHARED.get_or_init(|| Service::unix(&["--pool", "1"]))
}

/// A service that starts a VM only when a run asks for one, so that any VM
/// it has is the doing of the test that owns it.
fn on_demand(extra: &[&str]) -> Service {
    let mut args = vec!["--pool", "0"];
    args.extend_from_slice(extra);
    Service::unix(&args)
}

fn decode(text: &Value) -> Vec<u8> {
    BASE64.decode(text.as_str().unwrap_or_else(|| panic!("not base64 text: {text}"))).expect("base64")
}

/// The bytes of a result's stream, exact whether or not they were UTF-8.
fn stream_bytes(result: &Value, name: &str) -> Vec<u8> {
    match &result[format!("{name}_base64")] {
        Value::Null => result[name].as_str().expect("text output").as_bytes().to_vec(),
        encoded => decode(encoded),
    }
}

/// A streaming answer's output, adjacent chunks of one stream joined, and
/// its last line.
fn output_and_last(mut stream: Streaming) -> (Vec<(String, Vec<u8>)>, Value) {
    assert_eq!(stream.status(), 200);
    assert_eq!(stream.header("content-type"), Some("application/x-ndjson"));
    let mut output: Vec<(String, Vec<u8>)> = Vec::new();
    loop {
        let line = stream.next_line().expect("the answer ends with a result or an error line");
        let kind = line["type"].as_str().expect("every line has a type").to_owned();
        if kind != "stdout" && kind != "stderr" {
            assert!(stream.next_line().is_none(), "nothing follows the {kind} line");
            return (output, line);
        }
        let data = decode(&line["data"]);
        match output.last_mut() {
            Some((last, bytes)) if *last == kind => bytes.extend_from_slice(&data),
            _ => output.push((kind, data)),
        }
    }
}

/// An error answer: its status, kind and field (if it names one).
fn error_of(status: u16, body: &Value) -> (u16, String, Option<String>) {
    let error = &body["error"];
    let kind = error["kind"].as_str().unwrap_or_else(|| panic!("no error kind in {body}")).to_owned();
    assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()), "no message in {body}");
    (status, kind, error["field"].as_str().map(str::to_owned))
}

/// VMs the service has started, however each start ended.
fn vm_starts(service: &Service) -> f64 {
    service.metric("pid1_restores_total")
        + service.metric("pid1_cold_boots_total")
        + service.metric("pid1_restore_failures_total")
}

/// Runs that the service counted as ending `outcome`.
fn runs(service: &Service, outcome: &str) -> f64 {
    service.metric(&format!("pid1_runs_total{{outcome=\"{outcome}\"}}"))
}

/// A shell job that says it started, then sleeps far past any test.
fn sleeper() -> Value {
    json!({ "language": "sh", "code": "echo started; exec sleep 3600", "timeout": 0 })
}

/// A streaming run of [`sleeper`], once its job is running.
fn running_sleeper(service: &Service) -> Streaming {
    let mut stream = service.stream("/v1/runs", &sleeper());
    assert_eq!(stream.status(), 200);
    let first = stream.next_line().expect("the job's first output");
    assert_eq!((first["type"].as_str(), decode(&first["data"])), (Some("stdout"), b"started\n".to_vec()));
    stream
}

/// The one QEMU of a service with nothing else running.
fn only_qemu(service: &Service) -> rustix::process::Pid {
    let qemus = service.qemus();
    assert_eq!(qemus.len(), 1, "one VM runs: {qemus:?}");
    qemus[0]
}

/// A run works: the service is still serving.
fn still_serving(service: &Service) {
    let result = service.run(&json!({ "code": "print('still serving')" }));
    assert_eq!((result["stdout"].as_str(), result["exit_code"].as_i64()), (Some("still serving\n"), Some(0)));
}

// ---- runs ------------------------------------------------------------------

#[test]
fn runs_python_and_shell() {
    let service = shared();
    let result = service.run(&json!({
        "code": "import sys\nprint(6 * 7)\nprint('to stderr', file=sys.stderr)\nsys.exit(3)",
    }));
    assert_eq!(
        (result["stdout"].as_str(), result["stderr"].as_str(), result["exit_code"].as_i64()),
        (Some("42\n"), Some("to stderr\n"), Some(3)),
        "{result}"
    );
    assert_eq!(result["timed_out"], false);
    let result = service.run(&json!({
        "language": "sh",
        "code": "echo \"$GREETING\"; read line; echo \"read $line\" >&2; exit 5",
        "env": { "GREETING": "hello" },
        "stdin": "a line\n",
    }));
    assert_eq!(
        (result["stdout"].as_str(), result["stderr"].as_str(), result["exit_code"].as_i64()),
        (Some("hello\n"), Some("read a line\n"), Some(5)),
        "{result}"
    );
}

#[test]
fn a_stream_keeps_the_jobs_order_and_ends_with_the_result() {
    // Each write is flushed, and the job pauses between them so that the
    // order it wrote in is the only order there is.
    let code = "import sys, time\n\
                for out, text in [(sys.stdout, 'one\\n'), (sys.stderr, 'two\\n'), (sys.stdout, 'three\\n')]:\n\
                \x20   out.write(text)\n\
                \x20   out.flush()\n\
                \x20   time.sleep(0.2)\n";
    let (output, last) = output_and_last(shared().stream("/v1/runs", &json!({ "code": code })));
    let expected = [("stdout", "one\n"), ("stderr", "two\n"), ("stdout", "three\n")]
        .map(|(kind, text)| (kind.to_owned(), text.as_bytes().to_vec()));
    assert_eq!(output, expected);
    assert_eq!(last["type"], "result", "{last}");
    let result = &last["result"];
    assert_eq!(
        (result["stdout"].as_str(), result["stderr"].as_str(), result["exit_code"].as_i64()),
        (Some("one\nthree\n"), Some("two\n"), Some(0))
    );
}

#[test]
fn output_is_byte_exact() {
    let all: Vec<u8> = (0..=255).collect();
    let reversed: Vec<u8> = all.iter().rev().copied().collect();
    let request = json!({
        "code": "import sys\n\
                 sys.stdout.buffer.write(bytes(range(256)))\n\
                 sys.stderr.buffer.write(bytes(range(255, -1, -1)))\n",
    });
    let result = shared().run(&request);
    assert!(result["stdout_base64"].is_string(), "bytes that are not UTF-8 come as base64: {result}");
    assert_eq!(stream_bytes(&result, "stdout"), all);
    assert_eq!(stream_bytes(&result, "stderr"), reversed);

    let (output, last) = output_and_last(shared().stream("/v1/runs", &request));
    let joined = |name: &str| -> Vec<u8> {
        output.iter().filter(|(kind, _)| kind == name).flat_map(|(_, bytes)| bytes.clone()).collect()
    };
    assert_eq!(joined("stdout"), all);
    assert_eq!(joined("stderr"), reversed);
    assert_eq!(stream_bytes(&last["result"], "stdout"), all);
}

#[test]
fn files_go_up_and_come_down_byte_exact() {
    // Not a period of 256, so that a shifted or dropped block would show.
    let data: Vec<u8> = (0..100_000u32).map(|i| i.wrapping_mul(2_654_435_761).to_be_bytes()[0]).collect();
    let result = shared().run(&json!({
        "code": "import os\n\
                 data = open('in/data.bin', 'rb').read()\n\
                 open('out.bin', 'wb').write(data[::-1])\n\
                 print(oct(os.stat('tool.sh').st_mode & 0o777), len(data))\n\
                 print(os.popen('./tool.sh').read(), end='')\n",
        "files": [
            { "path": "in/data.bin", "content": BASE64.encode(&data) },
            { "path": "/home/user/tool.sh", "content": BASE64.encode("#!/bin/sh\necho tool ran\n"), "mode": 0o755 },
        ],
        "download": ["out.bin", "/home/user/in/data.bin"],
    }));
    assert_eq!(result["exit_code"], 0, "{result}");
    assert_eq!(result["stdout"], "0o755 100000\ntool ran\n");
    let files = result["files"].as_array().expect("the downloads");
    let downloaded: Vec<(&str, Vec<u8>)> =
        files.iter().map(|f| (f["path"].as_str().expect("a path"), decode(&f["content"]))).collect();
    let reversed: Vec<u8> = data.iter().rev().copied().collect();
    assert_eq!(downloaded, [("out.bin", reversed), ("/home/user/in/data.bin", data)]);
}

// ---- sessions --------------------------------------------------------------

/// Opens a session; its id.
fn open_session(service: &Service, request: &Value) -> String {
    let response = service.post("/v1/sessions", request);
    assert_eq!(response.status, 201, "{}", response.text());
    response.json()["id"].as_str().expect("a session id").to_owned()
}

/// One step of a session that must succeed: its result.
fn step(service: &Service, id: &str, code: &str) -> Value {
    let response = service.post(&format!("/v1/sessions/{id}/exec"), &json!({ "code": code }));
    assert_eq!(response.status, 200, "{code}: {}", response.text());
    let result = response.json();
    assert_eq!(result["exit_code"], 0, "{code}: {result}");
    result
}

fn names(listing: &Value) -> Vec<(String, String)> {
    let entries = listing["entries"].as_array().unwrap_or_else(|| panic!("no entries in {listing}"));
    let mut names: Vec<(String, String)> = entries
        .iter()
        .map(|e| (e["name"].as_str().unwrap_or("").to_owned(), e["kind"].as_str().unwrap_or("").to_owned()))
        .collect();
    names.sort();
    names
}

#[test]
fn a_session_keeps_state_and_files() {
    let service = shared();
    let id = open_session(service, &json!({ "language": "python" }));
    let at = |rest: &str| format!("/v1/sessions/{id}{rest}");
    step(service, &id, "counter = 40");
    step(service, &id, "counter += 2");
    // The third step as a stream: the same result in the streaming shape.
    let (output, last) = output_and_last(service.stream(&at("/exec"), &json!({ "code": "print(counter)" })));
    assert_eq!(output, [("stdout".to_owned(), b"42\n".to_vec())]);
    assert_eq!(last["result"]["stdout"], "42\n", "{last}");
    let info = service.get(&at(""));
    assert_eq!((info.status, info.json()["steps"].as_u64()), (200, Some(3)), "{}", info.text());

    let blob: Vec<u8> = (0..=255).collect();
    let put = service.send("PUT", &at("/files/work/blob.bin"), &blob);
    assert_eq!(put.status, 204, "{}", put.text());
    let read = step(service, &id, "print(len(open('work/blob.bin', 'rb').read()), end='')");
    assert_eq!(read["stdout"], "256");
    step(service, &id, "open('made.txt', 'w').write('by the session')");
    let got = service.get(&at("/files/work/blob.bin"));
    assert_eq!((got.status, &got.body), (200, &blob));
    let got = service.get(&at("/files/made.txt"));
    assert_eq!((got.status, got.text()), (200, "by the session".to_owned()));

    let home = service.get(&at("/files"));
    assert_eq!(home.status, 200, "{}", home.text());
    let home = names(&home.json());
    for entry in [("made.txt", "file"), ("work", "dir")] {
        assert!(home.contains(&(entry.0.to_owned(), entry.1.to_owned())), "{entry:?} not in {home:?}");
    }
    let work = service.get(&at("/files?path=work"));
    let listing = work.json();
    assert_eq!(names(&listing), [("blob.bin".to_owned(), "file".to_owned())]);
    assert_eq!(listing["entries"][0]["size"], 256);

    let deleted = service.send("DELETE", &at("/files/work/blob.bin"), b"");
    assert_eq!(deleted.status, 204, "{}", deleted.text());
    let gone = service.get(&at("/files/work/blob.bin"));
    assert_eq!(error_of(gone.status, &gone.json()).1, "file", "{}", gone.text());
    assert!((400..500).contains(&gone.status), "{}", gone.status);
    assert_eq!(names(&service.get(&at("/files?path=work")).json()), []);

    let closed = service.send("DELETE", &at(""), b"");
    assert_eq!(closed.status, 204, "{}", closed.text());
    let after = service.get(&at(""));
    assert_eq!(error_of(after.status, &after.json()), (404, "no_session".to_owned(), None));
}

#[test]
fn an_idle_session_is_closed_and_its_vm_destroyed() {
    let service = on_demand(&[]);
    let id = open_session(&service, &json!({ "language": "sh", "idle_timeout": 2 }));
    step(&service, &id, "x=5");
    assert_eq!(step(&service, &id, "echo $x")["stdout"], "5\n");
    let vm = only_qemu(&service);
    let info = format!("/v1/sessions/{id}");
    service.wait_for("the idle session to close", || service.get(&info).status == 404);
    service.wait_gone("the session's QEMU to go", &[vm]);
    assert_eq!(service.health()["sessions"], 0);
    let exec = service.post(&format!("{info}/exec"), &json!({ "code": "echo $x" }));
    assert_eq!(error_of(exec.status, &exec.json()).1, "no_session");
}

// ---- bad input -------------------------------------------------------------

/// A request the service must refuse: where it goes, its body, and the
/// status, kind and field of the answer (and words its message must hold).
struct Bad {
    what: &'static str,
    path: &'static str,
    body: Vec<u8>,
    status: u16,
    kind: &'static str,
    field: Option<&'static str>,
    says: &'static str,
}

fn bad(what: &'static str, body: Value, field: &'static str) -> Bad {
    Bad {
        what,
        path: "/v1/runs",
        body: body.to_string().into_bytes(),
        status: 400,
        kind: "bad_request",
        field: Some(field),
        says: field,
    }
}

fn bad_inputs() -> Vec<Bad> {
    let too_big = format!("{}\n", "#".repeat(proto::MAX_CODE as usize));
    let escape = |path: &str| json!({ "code": "print(1)", "files": [{ "path": path, "content": "" }] });
    vec![
        Bad {
            what: "malformed JSON",
            path: "/v1/runs",
            body: br#"{"code": "print(1)""#.to_vec(),
            status: 400,
            kind: "bad_request",
            field: None,
            says: "invalid JSON",
        },
        Bad {
            what: "an unknown field",
            path: "/v1/runs",
            body: br#"{"code": "print(1)", "colour": "red"}"#.to_vec(),
            status: 400,
            kind: "bad_request",
            field: None,
            says: "`colour`",
        },
        bad("empty code", json!({ "code": " \n" }), "code"),
        bad("code with a NUL", json!({ "code": "print(1)\0" }), "code"),
        bad("code over 1 MiB", json!({ "code": too_big }), "code"),
        bad("a bad env name", json!({ "code": "print(1)", "env": { "1BAD": "x" } }), "env.1BAD"),
        bad("a negative timeout", json!({ "code": "print(1)", "timeout": -1 }), "timeout"),
        bad("a timeout past a day", json!({ "code": "print(1)", "timeout": 86_401 }), "timeout"),
        bad("a file up out of the home", escape("../outside"), "files[0].path"),
        bad("a file up elsewhere", escape("/etc/profile"), "files[0].path"),
        bad(
            "a file up that is not base64",
            json!({ "code": "print(1)", "files": [{ "path": "a", "content": "!!" }] }),
            "files[0].content",
        ),
        bad(
            "a download out of the home",
            json!({ "code": "print(1)", "download": ["fine.txt", "/home/user/../../etc/shadow"] }),
            "download[1]",
        ),
        bad(
            "a download elsewhere",
            json!({ "code": "print(1)", "download": ["/etc/shadow"] }),
            "download[0]",
        ),
        Bad {
            path: "/v1/sessions",
            ..bad("a session idle timeout of 0", json!({ "idle_timeout": 0 }), "idle_timeout")
        },
        Bad {
            what: "an unknown session",
            path: "/v1/sessions/00000000000000000000000000000000/exec",
            body: json!({ "code": "print(1)" }).to_string().into_bytes(),
            status: 404,
            kind: "no_session",
            field: None,
            says: "no session",
        },
    ]
}

/// Sends `bad` and checks the refusal, and that no VM was started for it.
fn refused(service: &Service, bad: &Bad, headers: &[(&str, &str)]) {
    let starts = vm_starts(service);
    let answer = service.begin("POST", bad.path, headers, &bad.body).answer();
    let what = format!("{}: {}", bad.what, answer.text());
    assert_eq!(answer.header("content-type"), Some("application/json"), "{what}");
    let error = error_of(answer.status, &answer.json());
    assert_eq!(error, (bad.status, bad.kind.to_owned(), bad.field.map(str::to_owned)), "{what}");
    assert!(answer.json()["error"]["message"].as_str().is_some_and(|m| m.contains(bad.says)), "{what}");
    assert_eq!(vm_starts(service), starts, "{what}: a VM was started");
    assert_eq!(service.qemus(), [], "{what}: a VM runs");
    assert_eq!(service.health()["pool"]["in_use"], 0, "{what}");
}

#[test]
fn bad_input_is_refused_before_any_vm() {
    let service = on_demand(&[]);
    for bad in bad_inputs() {
        refused(&service, &bad, &[]);
        still_serving(&service);
        // A run answers before its VM is torn down: the next refusal must
        // find the VM gone and its slot given back.
        service.settle();
    }
    assert_eq!(service.health()["sessions"], 0);
}

#[test]
fn a_streaming_run_refuses_bad_input_with_its_status() {
    // Refused before the answer starts, as a request that is not streamed
    // is: not a 200 whose last line is the error.
    let service = on_demand(&[]);
    for bad in bad_inputs().into_iter().filter(|bad| bad.path == "/v1/runs") {
        refused(&service, &bad, &[("Accept", "application/x-ndjson")]);
    }
    still_serving(&service);
}

// ---- who may call ----------------------------------------------------------

#[test]
fn tcp_needs_a_token_and_refuses_requests_without_it() {
    let addr = common::service::free_port();
    let (status, stderr) = refused_start(&["--listen", &format!("tcp:{addr}"), "--pool", "0"]);
    assert!(!status.success(), "it served on TCP without a token: {stderr}");
    assert!(stderr.contains("--token-file"), "{stderr}");
    assert!(std::net::TcpStream::connect(addr).is_err(), "something listens on {addr}");

    let token = "a-token-of-some-length";
    let service = Service::tcp(token, &["--pool", "0"]);
    let run = json!({ "code": "print('ran')" }).to_string();
    let wrong = format!("Bearer {token}x");
    for (what, headers) in [
        ("no token", vec![]),
        ("a wrong token", vec![("Authorization", wrong.as_str())]),
        ("the token without Bearer", vec![("Authorization", token)]),
    ] {
        for (method, path, body) in [
            ("POST", "/v1/runs", run.as_bytes()),
            ("POST", "/v1/sessions", b"{}"),
            ("GET", "/v1/health", b""),
        ] {
            let answer = service.send_raw(method, path, &headers, body);
            assert_eq!(
                error_of(answer.status, &answer.json()),
                (401, "unauthorized".to_owned(), None),
                "{what}: {method} {path}"
            );
            assert_eq!(answer.header("www-authenticate"), Some("Bearer"), "{what}");
        }
    }
    assert_eq!(vm_starts(&service), 0.0, "a VM was started for a caller without the token");
    assert_eq!(service.qemus(), []);
    assert_eq!(service.health()["sessions"], 0);
    still_serving(&service);
}

// ---- runs that end badly ---------------------------------------------------

#[test]
fn a_client_that_goes_away_has_its_job_killed() {
    let service = on_demand(&[]);
    // Streaming: the client hangs up after the job's first output.
    let stream = running_sleeper(&service);
    let vm = only_qemu(&service);
    drop(stream);
    service.wait_gone("the abandoned run's QEMU to go", &[vm]);
    service.wait_for("the run to count as cancelled", || runs(&service, "cancelled") == 1.0);
    still_serving(&service);

    // Not streaming: it hangs up once the run has its VM.
    let handed = service.metric("pid1_run_handout_seconds_count");
    let call: Call = service.begin("POST", "/v1/runs", &[], sleeper().to_string().as_bytes());
    service.wait_for("the run to get its VM", || service.metric("pid1_run_handout_seconds_count") > handed);
    service.wait_for("the run's QEMU", || service.qemus().len() == 1);
    let vm = only_qemu(&service);
    drop(call);
    service.wait_gone("the abandoned run's QEMU to go", &[vm]);
    service.wait_for("the run to count as cancelled", || runs(&service, "cancelled") == 2.0);
    still_serving(&service);
    assert!(service.log().contains("cancelled"), "{}", service.log());
}

#[test]
fn a_qemu_killed_mid_run_is_vm_lost() {
    let service = on_demand(&[]);
    // Not streaming: 502 once the run's VM dies under it.
    let handed = service.metric("pid1_run_handout_seconds_count");
    let call = service.begin("POST", "/v1/runs", &[], sleeper().to_string().as_bytes());
    service.wait_for("the run to get its VM", || service.metric("pid1_run_handout_seconds_count") > handed);
    kill_process(only_qemu(&service), Signal::KILL).expect("kill the run's QEMU");
    let answer = call.answer();
    assert_eq!(
        error_of(answer.status, &answer.json()),
        (502, "vm_lost".to_owned(), None),
        "{}",
        answer.text()
    );
    assert_eq!(answer.header("retry-after"), None, "not a matter of capacity");
    still_serving(&service);
    service.settle();

    // Streaming: the job's output so far, then the error line.
    let stream = running_sleeper(&service);
    kill_process(only_qemu(&service), Signal::KILL).expect("kill the run's QEMU");
    let (output, last) = output_and_last(stream);
    assert_eq!(output, []);
    assert_eq!(
        (last["type"].as_str(), last["error"]["kind"].as_str()),
        (Some("error"), Some("vm_lost")),
        "{last}"
    );
    still_serving(&service);
    assert_eq!(runs(&service, "vm_lost"), 2.0);
}

#[test]
fn a_dead_vm_in_the_pool_is_never_handed_out() {
    let service = Service::unix(&["--pool", "2"]);
    service.settle();
    let idle = service.qemus();
    assert_eq!(idle.len(), 2, "the pool's VMs");
    for &vm in &idle {
        kill_process(vm, Signal::KILL).expect("kill an idle pooled QEMU");
    }
    service.wait_gone("the pooled QEMUs to die", &idle);
    let result = service.run(&json!({ "code": "print('on a live VM')" }));
    assert_eq!(result["stdout"], "on a live VM\n", "{result}");
    assert_eq!(service.metric("pid1_pool_discarded_total"), 2.0, "both dead VMs were found and dropped");
    // The pool fills again with live VMs.
    service.settle();
    assert!(service.qemus().iter().all(|vm| !idle.contains(vm)));
    still_serving(&service);
}

#[test]
fn a_full_queue_and_a_passed_deadline_are_503_with_retry_after() {
    let service = on_demand(&["--max-vms", "1", "--queue", "1", "--queue-timeout", "4"]);
    let holder = running_sleeper(&service);
    let vm = only_qemu(&service);
    // One run waits for the only VM; the next finds the queue full.
    let waiter = service.begin("POST", "/v1/runs", &[], json!({ "code": "print(1)" }).to_string().as_bytes());
    service.wait_for("a run to wait", || service.health()["pool"]["waiting"] == 1);
    let busy = |answer: &common::service::Response, says: &str| {
        assert_eq!(
            error_of(answer.status, &answer.json()),
            (503, "busy".to_owned(), None),
            "{}",
            answer.text()
        );
        let retry = answer.header("retry-after").and_then(|v| v.parse::<u64>().ok());
        assert!(retry.is_some_and(|s| s >= 1), "Retry-After: {:?}", answer.header("retry-after"));
        assert!(answer.text().contains(says), "{}", answer.text());
    };
    busy(&service.post("/v1/runs", &json!({ "code": "print(2)" })), "waiting");
    busy(&waiter.answer(), "within");
    assert_eq!(service.qemus(), [vm], "no VM past --max-vms");
    assert_eq!(runs(&service, "rejected"), 2.0);

    // A run waiting when the holder's client hangs up gets the freed slot.
    let next =
        service.begin("POST", "/v1/runs", &[], json!({ "code": "print('next')" }).to_string().as_bytes());
    service.wait_for("a run to wait", || service.health()["pool"]["waiting"] == 1);
    drop(holder);
    let answer = next.answer();
    assert_eq!((answer.status, answer.json()["stdout"].as_str()), (200, Some("next\n")), "{}", answer.text());
    service.wait_gone("the holder's QEMU to go", &[vm]);
    still_serving(&service);
}

// ---- stopping --------------------------------------------------------------

#[test]
fn sigterm_leaves_nothing_behind() {
    let service = Service::unix(&["--pool", "1", "--grace", "1"]);
    service.settle();
    // A pooled VM, one held by a session, one running a job.
    let id = open_session(&service, &json!({ "language": "sh" }));
    step(&service, &id, "true");
    let run = running_sleeper(&service);
    service.wait_for("three VMs", || service.qemus().len() == 3);
    let vms = service.qemus();
    let common::service::Address::Unix(socket) = service.address().clone() else { unreachable!() };
    assert!(exists(&socket));

    service.terminate();
    service.wait_for("the service to exit", || !service.is_running());
    service.wait_gone("its QEMUs to go", &vms);
    assert_eq!(qemus_naming(&service.tmp()), [], "a QEMU of the service outlived it");
    assert!(!exists(&socket), "the socket file is left");
    let left: Vec<String> = std::fs::read_dir(service.tmp())
        .expect("the service's TMPDIR")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, Vec::<String>::new(), "left in the service's TMPDIR");
    let log = service.log();
    assert!(log.contains("stopped"), "{log}");
    drop(run);
    let status = service.stop();
    assert!(status.success(), "the service exited with {status}:\n{log}");
}

#[test]
fn sigterm_lets_a_running_job_finish_within_the_grace() {
    let service = Service::unix(&["--pool", "2", "--grace", "60"]);
    service.settle();
    // The pause gives the test time to look while the job still runs.
    let mut run = service.stream(
        "/v1/runs",
        &json!({ "language": "sh", "code": "echo started; sleep 5; echo finished", "timeout": 0 }),
    );
    assert_eq!(run.next_line().map(|line| decode(&line["data"])), Some(b"started\n".to_vec()));
    // The run took one pooled VM; at least one other waits idle.
    assert!(service.qemus().len() >= 2, "{:?}", service.qemus());
    service.terminate();
    // The idle VMs go at once; the service stays for the job's.
    service.wait_for("only the running job's QEMU", || service.qemus().len() == 1);
    assert!(service.is_running(), "the service left before its running job ended:\n{}", service.log());
    let refused =
        service.try_send("POST", "/v1/runs", &[], json!({ "code": "print(1)" }).to_string().as_bytes());
    assert!(refused.as_ref().map_or(true, |r| r.status == 503), "a new run was taken: {refused:?}");
    let (output, last) = output_and_last(run);
    assert_eq!(output, [("stdout".to_owned(), b"finished\n".to_vec())]);
    assert_eq!(
        (last["type"].as_str(), last["result"]["exit_code"].as_i64()),
        (Some("result"), Some(0)),
        "{last}"
    );
    service.wait_for("the service to exit", || !service.is_running());
    let status = service.stop();
    assert!(status.success(), "the service exited with {status}");
}
