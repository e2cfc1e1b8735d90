use proto::Exit;

use super::*;

fn request(code: &str) -> RunRequest {
    RunRequest { code: code.into(), ..RunRequest::default() }
}

fn parse(json: &str) -> RunRequest {
    serde_json::from_str(json).unwrap_or_else(|e| panic!("{json} did not parse: {e}"))
}

/// The field a refused request names.
fn refused_field(request: &RunRequest) -> String {
    match request.check() {
        Ok(_) => panic!("{request:?} was accepted"),
        Err(e) => e.field,
    }
}

fn with_file(path: &str, content: &str, mode: Option<u32>) -> RunRequest {
    RunRequest {
        files: vec![Upload { path: path.into(), content: content.into(), mode }],
        ..request("print(1)")
    }
}

/// Paths that leave the home directory, or name no file in it.
const OUTSIDE: [&str; 9] =
    ["../x", "/etc/passwd", "/home/user", "/home/user/", "/home/userx/a", "a/../../b", "a/..", "", "a\0b"];

const INSIDE: [&str; 5] = ["a", "dir/a.txt", "./a", "/home/user/a", "/home/user/dir/a.txt"];

#[test]
fn a_minimal_request_is_python_with_the_defaults() {
    let request: RunRequest = serde_json::from_str(r#"{"code": "print(1)"}"#).unwrap();
    let (job, uploads) = request.check().unwrap();
    assert_eq!((job.lang, job.timeout, uploads.len()), (Lang::Python, Some(Duration::from_secs(30)), 0));
}

// JSON parsing.

#[test]
fn fields_left_out_of_the_json_take_their_defaults() {
    assert_eq!(parse(r#"{"code": "print(1)"}"#), request("print(1)"));
    let (job, _) = request("print(1)").check().unwrap();
    assert!(job.env.is_empty());
    assert_eq!(job.stdin, None);
    assert_eq!(job.memory_limit_mb, None);
    assert_eq!(
        (job.stdout_limit, job.stderr_limit),
        (proto::DEFAULT_OUTPUT_LIMIT, proto::DEFAULT_OUTPUT_LIMIT)
    );
}

#[test]
fn every_field_is_read_from_the_json() {
    let parsed = parse(
        r#"{"code": "echo hi", "language": "sh", "timeout": 2.5, "env": {"A": "1"}, "stdin": "in",
            "files": [{"path": "a.txt", "content": "aGk=", "mode": 493}], "download": ["out.txt"],
            "memory_limit_mb": 128, "output_limit": 4096, "packages": ["six==1.17.0"]}"#,
    );
    let expected = RunRequest {
        code: "echo hi".into(),
        language: Language::Sh,
        timeout: Some(2.5),
        env: BTreeMap::from([("A".into(), "1".into())]),
        stdin: Some("in".into()),
        files: vec![Upload { path: "a.txt".into(), content: "aGk=".into(), mode: Some(0o755) }],
        download: vec!["out.txt".into()],
        memory_limit_mb: Some(128),
        output_limit: Some(4096),
        packages: vec!["six==1.17.0".into()],
    };
    assert_eq!(parsed, expected);
}

#[test]
fn an_unknown_field_is_refused_by_name() {
    let err = serde_json::from_str::<RunRequest>(r#"{"code": "x", "timeot": 5}"#).unwrap_err();
    assert!(err.to_string().contains("timeot"), "{err}");
    let err = serde_json::from_str::<RunRequest>(
        r#"{"code": "x", "files": [{"path": "a", "content": "", "owner": "root"}]}"#,
    )
    .unwrap_err();
    assert!(err.to_string().contains("owner"), "{err}");
}

#[test]
fn a_request_without_code_is_refused_by_name() {
    let err = serde_json::from_str::<RunRequest>(r#"{"language": "sh"}"#).unwrap_err();
    assert!(err.to_string().contains("code"), "{err}");
}

#[test]
fn languages_and_their_aliases_parse() {
    for (name, language) in
        [("python", Language::Python), ("sh", Language::Sh), ("shell", Language::Sh), ("bash", Language::Sh)]
    {
        let parsed = parse(&format!(r#"{{"code": "x", "language": "{name}"}}"#));
        assert_eq!(parsed.language, language, "{name}");
    }
}

#[test]
fn an_unknown_language_is_refused_by_name() {
    let err = serde_json::from_str::<RunRequest>(r#"{"code": "x", "language": "ruby"}"#).unwrap_err();
    assert!(err.to_string().contains("ruby"), "{err}");
}

#[test]
fn a_language_is_written_as_its_name_and_maps_to_the_wire() {
    for (language, lang) in [(Language::Python, Lang::Python), (Language::Sh, Lang::Shell)] {
        assert_eq!(serde_json::to_value(language).unwrap(), language.name());
        assert_eq!(language.lang(), lang);
        assert_eq!(RunRequest { language, ..request("x") }.check().unwrap().0.lang, lang);
    }
}

// The code.

#[test]
fn empty_or_blank_code_is_refused() {
    for code in ["", " ", "\n\t  \r\n"] {
        let err = request(code).check().unwrap_err();
        assert_eq!(err, FieldError { field: "code".into(), reason: "is empty".into() }, "{code:?}");
    }
}

#[test]
fn code_with_a_nul_is_refused() {
    let err = request("print(1)\0print(2)").check().unwrap_err();
    assert_eq!(err.field, "code");
    assert!(err.reason.contains("NUL"), "{err}");
    // Not blank: the NUL is what it is refused for.
    assert_eq!(request("\0").check().unwrap_err().reason, err.reason);
}

#[test]
fn code_is_limited_to_the_wire_limit() {
    let max = proto::MAX_CODE as usize;
    let (job, _) = request(&"#".repeat(max)).check().unwrap();
    assert_eq!(job.code.len(), max);
    let err = request(&"#".repeat(max + 1)).check().unwrap_err();
    assert_eq!(err.field, "code");
    assert!(err.reason.contains(&(max + 1).to_string()), "{err}");
}

#[test]
fn the_code_reaches_the_job_unchanged() {
    let code = "  print('é')\n";
    assert_eq!(request(code).check().unwrap().0.code, code.as_bytes());
}

// The timeout.

#[test]
fn no_timeout_means_the_default() {
    assert_eq!(check_timeout("timeout", None), Ok(Some(Duration::from_secs_f64(DEFAULT_TIMEOUT_SECS))));
    assert_eq!(DEFAULT_TIMEOUT_SECS, 30.0);
}

#[test]
fn a_zero_timeout_means_no_limit() {
    assert_eq!(check_timeout("timeout", Some(0.0)), Ok(None));
    let (job, _) = RunRequest { timeout: Some(0.0), ..request("x") }.check().unwrap();
    assert_eq!(job.timeout, None);
}

#[test]
fn a_timeout_in_range_is_kept_to_the_millisecond() {
    assert_eq!(check_timeout("timeout", Some(2.5)), Ok(Some(Duration::from_millis(2500))));
    assert_eq!(check_timeout("timeout", Some(0.001)), Ok(Some(Duration::from_millis(1))));
    assert_eq!(
        check_timeout("timeout", Some(MAX_TIMEOUT_SECS)),
        Ok(Some(Duration::from_secs_f64(MAX_TIMEOUT_SECS)))
    );
    let (job, _) = RunRequest { timeout: Some(2.5), ..request("x") }.check().unwrap();
    assert_eq!(job.timeout, Some(Duration::from_millis(2500)));
}

#[test]
fn a_timeout_out_of_range_is_refused() {
    for secs in [-1.0, -0.001, MAX_TIMEOUT_SECS + 0.001, 1e300, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let err = check_timeout("timeout", Some(secs)).unwrap_err();
        assert_eq!(err.field, "timeout", "{secs}");
        assert_eq!(refused_field(&RunRequest { timeout: Some(secs), ..request("x") }), "timeout", "{secs}");
    }
    // The caller's name for the field is the one reported.
    assert_eq!(check_timeout("deadline", Some(-1.0)).unwrap_err().field, "deadline");
}

#[test]
fn a_negative_timeout_in_json_parses_and_is_then_refused() {
    assert_eq!(refused_field(&parse(r#"{"code": "x", "timeout": -1}"#)), "timeout");
}

// The environment.

#[test]
fn variable_names_a_shell_takes_are_kept_in_order() {
    let env = BTreeMap::from([
        ("PATH".to_owned(), "/bin".to_owned()),
        ("_".to_owned(), String::new()),
        ("_a1".to_owned(), "x=y".to_owned()),
        ("a_B_9".to_owned(), "é".to_owned()),
    ]);
    let (job, _) = RunRequest { env: env.clone(), ..request("x") }.check().unwrap();
    assert_eq!(job.env, env.into_iter().collect::<Vec<_>>());
}

#[test]
fn a_bad_variable_name_is_refused_by_name() {
    for name in ["", "1A", "A-B", "A B", "A=B", "É", "A.B"] {
        let env = BTreeMap::from([(name.to_owned(), "v".to_owned())]);
        let err = check_env("env", &env).unwrap_err();
        assert_eq!(err.field, format!("env.{name}"), "{name:?}");
        assert!(err.reason.contains("variable name"), "{err}");
        assert_eq!(refused_field(&RunRequest { env, ..request("x") }), format!("env.{name}"));
    }
}

#[test]
fn a_nul_in_a_value_is_refused() {
    let env = BTreeMap::from([("A".to_owned(), "a\0b".to_owned())]);
    let err = check_env("env", &env).unwrap_err();
    assert_eq!(err.field, "env.A");
    assert!(err.reason.contains("NUL"), "{err}");
}

#[test]
fn the_number_of_variables_is_limited_to_the_wires() {
    let env = |n: usize| (0..n).map(|i| (format!("V{i}"), String::new())).collect::<BTreeMap<_, _>>();
    assert_eq!(check_env("env", &env(proto::MAX_ENV)).unwrap().len(), proto::MAX_ENV);
    let err = check_env("env", &env(proto::MAX_ENV + 1)).unwrap_err();
    assert_eq!(err.field, "env");
    assert_eq!(refused_field(&RunRequest { env: env(proto::MAX_ENV + 1), ..request("x") }), "env");
}

// Stdin, memory and output limits.

#[test]
fn stdin_text_becomes_the_jobs_stdin_bytes() {
    let (job, _) = RunRequest { stdin: Some("héllo\n".into()), ..request("x") }.check().unwrap();
    assert_eq!(job.stdin.as_deref(), Some("héllo\n".as_bytes()));
    let (job, _) = RunRequest { stdin: Some(String::new()), ..request("x") }.check().unwrap();
    assert_eq!(job.stdin.as_deref(), Some(&b""[..]));
}

#[test]
fn a_memory_limit_of_zero_is_refused() {
    let err = RunRequest { memory_limit_mb: Some(0), ..request("x") }.check().unwrap_err();
    assert_eq!(err.to_string(), "memory_limit_mb: must be at least 1");
    let (job, _) = RunRequest { memory_limit_mb: Some(1), ..request("x") }.check().unwrap();
    assert_eq!(job.memory_limit_mb, Some(1));
}

#[test]
fn the_output_limit_applies_to_both_streams() {
    let (job, _) = RunRequest { output_limit: Some(10), ..request("x") }.check().unwrap();
    assert_eq!((job.stdout_limit, job.stderr_limit), (10, 10));
}

// Uploads and downloads.

#[test]
fn uploads_are_decoded_with_their_modes() {
    let request = RunRequest {
        files: vec![
            Upload { path: "a.txt".into(), content: "aGVsbG8=".into(), mode: None },
            Upload { path: "/home/user/bin/run".into(), content: String::new(), mode: Some(0o755) },
        ],
        ..request("x")
    };
    let (_, uploads) = request.check().unwrap();
    assert_eq!(
        uploads,
        [
            CheckedUpload { path: "a.txt".into(), data: b"hello".to_vec(), mode: 0o644 },
            CheckedUpload { path: "/home/user/bin/run".into(), data: Vec::new(), mode: 0o755 },
        ]
    );
}

#[test]
fn an_upload_that_is_not_base64_is_refused() {
    let err = with_file("a", "not base64!", None).check().unwrap_err();
    assert_eq!(err.field, "files[0].content");
    assert!(err.reason.contains("base64"), "{err}");
}

#[test]
fn an_upload_mode_past_the_permission_bits_is_refused() {
    assert_eq!(with_file("a", "", Some(0o7777)).check().unwrap().1[0].mode, 0o7777);
    assert_eq!(refused_field(&with_file("a", "", Some(0o10000))), "files[0].mode");
    assert_eq!(refused_field(&with_file("a", "", Some(u32::MAX))), "files[0].mode");
}

#[test]
fn upload_paths_must_be_in_the_home_directory() {
    for path in OUTSIDE {
        assert_eq!(refused_field(&with_file(path, "", None)), "files[0].path", "{path:?}");
    }
    for path in INSIDE {
        let (_, uploads) = with_file(path, "", None).check().unwrap_or_else(|e| panic!("{path:?}: {e}"));
        assert_eq!(uploads[0].path, path);
    }
}

#[test]
fn a_refused_upload_is_named_by_its_index() {
    let mut request = with_file("a", "", None);
    request.files.push(Upload { path: "../b".into(), content: String::new(), mode: None });
    assert_eq!(refused_field(&request), "files[1].path");
}

#[test]
fn download_paths_must_be_in_the_home_directory() {
    for path in OUTSIDE {
        let request = RunRequest { download: vec!["ok.txt".into(), path.into()], ..request("x") };
        assert_eq!(refused_field(&request), "download[1]", "{path:?}");
    }
    let request = RunRequest { download: INSIDE.map(String::from).to_vec(), ..request("x") };
    assert!(request.check().is_ok());
}

#[test]
fn a_path_refusal_names_the_path_and_the_home() {
    let err = check_guest_path("p", "/etc/passwd").unwrap_err();
    assert_eq!(err.field, "p");
    assert!(err.reason.contains("/etc/passwd") && err.reason.contains(HOME), "{err}");
}

#[test]
fn a_field_error_is_shown_and_sent_as_field_and_reason() {
    let err = FieldError { field: "code".into(), reason: "is empty".into() };
    assert_eq!(err.to_string(), "code: is empty");
    assert_eq!(
        serde_json::to_value(&err).unwrap(),
        serde_json::json!({"field": "code", "reason": "is empty"})
    );
}

// Inferring the language.

#[test]
fn a_shebang_names_the_language() {
    let cases: [(&str, Option<Language>); 18] = [
        ("#!/usr/bin/python3\nprint(1)", Some(Language::Python)),
        ("#!/usr/bin/python3.12", Some(Language::Python)),
        ("#!/usr/bin/python", Some(Language::Python)),
        ("#!/usr/bin/env python3\nprint(1)", Some(Language::Python)),
        ("#!/usr/bin/env -S python3 -u\n", Some(Language::Python)),
        ("#! /usr/bin/python3\n", Some(Language::Python)),
        ("#!/usr/bin/env python3\r\nprint(1)\r\n", Some(Language::Python)),
        // The warm interpreter is python3: another one is for the kernel to run.
        ("#!/usr/bin/python2", Some(Language::Sh)),
        ("#!/bin/bash\necho hi", Some(Language::Sh)),
        ("#!/bin/sh -e\n", Some(Language::Sh)),
        ("#!/usr/bin/env bash\n", Some(Language::Sh)),
        ("#!/usr/bin/awk -f\n{print}", Some(Language::Sh)),
        ("print(1)\n", None),
        ("", None),
        (" #!/bin/sh\n", None),
        ("echo\n#!/bin/sh\n", None),
        ("#!\n", None),
        ("#!/usr/bin/env\n", None),
    ];
    for (code, language) in cases {
        assert_eq!(Language::from_shebang(code.as_bytes()), language, "{code:?}");
    }
}

#[test]
fn a_byte_order_mark_before_the_shebang_is_skipped() {
    assert_eq!(Language::from_shebang(b"\xEF\xBB\xBF#!/usr/bin/env python3\n"), Some(Language::Python));
    assert_eq!(Language::from_shebang(b"\xEF\xBB\xBF#!/bin/sh\n"), Some(Language::Sh));
    assert_eq!(Language::from_shebang(b"\xEF\xBB\xBFprint(1)\n"), None);
}

#[test]
fn an_extension_names_the_language() {
    for (path, language) in [
        ("a.py", Some(Language::Python)),
        ("dir/run.sh", Some(Language::Sh)),
        ("a.tar.sh", Some(Language::Sh)),
        ("a", None),
        ("a.txt", None),
        ("dir.sh/a", None),
    ] {
        assert_eq!(Language::from_extension(Path::new(path)), language, "{path}");
    }
}

#[test]
fn the_extension_wins_over_the_shebang_which_wins_over_python() {
    let cases = [
        (Some("a.sh"), "#!/usr/bin/env python3\n", Language::Sh),
        (Some("a.py"), "#!/bin/sh\n", Language::Python),
        (Some("a.txt"), "#!/bin/sh\n", Language::Sh),
        (Some("a"), "echo hi\n", Language::Python),
        (None, "#!/bin/bash\n", Language::Sh),
        (None, "echo hi\n", Language::Python),
    ];
    for (path, code, language) in cases {
        assert_eq!(Language::infer(path.map(Path::new), code.as_bytes()), language, "{path:?} {code:?}");
    }
}

// The result.

fn outcome(exit: Exit, timed_out: bool) -> Outcome {
    Outcome {
        pid: 7,
        exit,
        timed_out,
        stdout: b"out\n".to_vec(),
        stderr: b"err\n".to_vec(),
        stdout_truncated: false,
        stderr_truncated: false,
        duration: Duration::from_millis(5),
        peak_memory: 0,
        cpu_time: Duration::ZERO,
    }
}

fn result(outcome: &Outcome) -> RunResult {
    RunResult::new(outcome, StartKind::Cold, "tcg", Timings::default())
}

#[test]
fn the_exit_code_is_the_shells() {
    assert_eq!(result(&outcome(Exit::Code(0), false)).exit_code, 0);
    assert_eq!(result(&outcome(Exit::Code(3), false)).exit_code, 3);
    assert_eq!(result(&outcome(Exit::Code(255), false)).exit_code, 255);
    assert_eq!(result(&outcome(Exit::Signal(9), false)).exit_code, 137);
    assert_eq!(result(&outcome(Exit::Signal(15), false)).exit_code, 143);
}

#[test]
fn a_timed_out_job_exits_with_minus_one() {
    let r = result(&outcome(Exit::Signal(9), true));
    assert_eq!((r.exit_code, r.timed_out), (-1, true));
    assert!(!result(&outcome(Exit::Signal(9), false)).timed_out);
}

#[test]
fn utf8_output_is_text_only() {
    let outcome = Outcome { stdout: "héllo\n".into(), stderr: Vec::new(), ..outcome(Exit::Code(0), false) };
    let r = result(&outcome);
    assert_eq!((r.stdout.as_str(), r.stdout_base64), ("héllo\n", None));
    assert_eq!((r.stderr.as_str(), r.stderr_base64), ("", None));
}

#[test]
fn other_output_is_lossy_text_and_exact_base64() {
    let outcome = Outcome { stderr: b"a\xffb".to_vec(), ..outcome(Exit::Code(0), false) };
    let r = result(&outcome);
    assert_eq!(r.stderr, "a\u{FFFD}b");
    let bytes = BASE64.decode(r.stderr_base64.expect("stderr is not UTF-8")).unwrap();
    assert_eq!(bytes, b"a\xffb");
    // Each stream on its own: stdout is valid.
    assert_eq!((r.stdout.as_str(), r.stdout_base64), ("out\n", None));
}

#[test]
fn the_outcome_and_the_vm_are_carried_into_the_result() {
    let outcome = Outcome {
        stdout_truncated: true,
        peak_memory: 12_345_678,
        cpu_time: Duration::from_micros(1_234_567),
        ..outcome(Exit::Code(0), false)
    };
    let r = RunResult::new(&outcome, StartKind::Restored, "kvm", Timings::default());
    assert_eq!((r.stdout_truncated, r.stderr_truncated), (true, false));
    assert_eq!(r.peak_memory_bytes, 12_345_678);
    assert_eq!(r.cpu_ms, 1234.6);
    assert_eq!((r.start, r.accel.as_str()), (StartKind::Restored, "kvm"));
    assert!(r.files.is_empty());
}

#[test]
fn times_are_rounded_to_a_tenth_of_a_millisecond() {
    let t = Timings { boot_ms: 12.36, exec_ms: 0.04, total_ms: 100.0, kernel_ms: 7.06, init_ms: 0.96 };
    let r = RunResult::new(&outcome(Exit::Code(0), false), StartKind::Cold, "tcg", t);
    assert_eq!([r.boot_ms, r.exec_ms, r.total_ms, r.kernel_ms, r.init_ms], [12.4, 0.0, 100.0, 7.1, 1.0]);
    assert_eq!([round_ms(1.24), round_ms(1.26), round_ms(0.0)], [1.2, 1.3, 0.0]);
}

#[test]
fn a_result_has_exactly_the_documented_fields() {
    let json = serde_json::to_value(result(&outcome(Exit::Code(0), false))).unwrap();
    let mut keys: Vec<&str> = json.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    let mut expected = [
        "stdout",
        "stderr",
        "exit_code",
        "timed_out",
        "stdout_truncated",
        "stderr_truncated",
        "peak_memory_bytes",
        "cpu_ms",
        "start",
        "boot_ms",
        "exec_ms",
        "total_ms",
        "kernel_ms",
        "init_ms",
        "accel",
    ];
    expected.sort_unstable();
    assert_eq!(keys, expected);
    assert_eq!(json["start"], "cold");
    assert_eq!(json["stdout"], "out\n");
}

#[test]
fn base64_and_files_are_sent_when_present() {
    let mut r = result(&Outcome { stdout: vec![0xff], ..outcome(Exit::Code(0), false) });
    r.files.push(Download { path: "out.txt".into(), content: base64(b"hi") });
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["stdout_base64"], "/w==");
    assert_eq!(json["files"], serde_json::json!([{"path": "out.txt", "content": "aGk="}]));
    assert!(json.get("stderr_base64").is_none());
}

#[test]
fn requirements_pass_and_anything_else_is_refused_as_packages() {
    let with = |specs: &[&str]| RunRequest {
        packages: specs.iter().map(|s| (*s).to_owned()).collect(),
        ..request("print(1)")
    };
    assert!(with(&["numpy==2.1.3", "six", "httpx[http2]>=0.27"]).check().is_ok());
    for bad in [&["--index-url=http://x"][..], &["./local"], &["six==1", "six==2"], &[""]] {
        let err = with(bad).check().unwrap_err();
        assert_eq!(err.field, "packages", "{bad:?}: {err}");
    }
    assert!(with(&["six==1", "six==2"]).check().unwrap_err().reason.contains("conflicting"));
}

#[test]
fn a_resolved_set_is_sent_only_when_there_is_one() {
    let mut r = result(&outcome(Exit::Code(0), false));
    assert!(serde_json::to_value(&r).unwrap().get("packages").is_none());
    r.packages = vec!["six==1.17.0".into()];
    assert_eq!(serde_json::to_value(&r).unwrap()["packages"], serde_json::json!(["six==1.17.0"]));
}

#[test]
fn start_kinds_are_written_in_lowercase() {
    for (kind, name) in
        [(StartKind::Cold, "cold"), (StartKind::Restored, "restored"), (StartKind::Pooled, "pooled")]
    {
        assert_eq!(serde_json::to_value(kind).unwrap(), name);
    }
}

#[test]
fn a_result_round_trips_through_json() {
    let plain = result(&outcome(Exit::Signal(9), true));
    let mut full = RunResult::new(
        &Outcome { stdout: vec![0xfe, 0x00], stderr: vec![0xff], ..outcome(Exit::Code(1), false) },
        StartKind::Pooled,
        "kvm",
        Timings { boot_ms: 1.5, exec_ms: 2.5, total_ms: 4.0, kernel_ms: 0.5, init_ms: 0.1 },
    );
    full.files.push(Download { path: "a".into(), content: base64(b"\x00\x01") });
    full.packages.push("numpy==2.1.3".into());
    for r in [plain, full] {
        let back: RunResult = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }
}
