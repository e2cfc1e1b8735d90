use std::path::{Path, PathBuf};

use clap::error::ErrorKind;
use clap::{CommandFactory, Parser};

use super::*;

// `Cli` is the binary's; these stand in for its commands.

#[derive(Parser)]
struct Run {
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Parser)]
struct Template {
    #[command(subcommand)]
    action: TemplateAction,
}

#[derive(Parser)]
struct Repl {
    #[command(flatten)]
    repl: ReplArgs,
}

fn argv<'a>(args: &'a [&'a str]) -> impl Iterator<Item = &'a str> {
    std::iter::once("vmexec").chain(args.iter().copied())
}

/// `args` parsed as the command `C` makes them, with `--server` not read
/// from the environment: a caller's $PID1_SERVER must not change a test.
fn parse<C: Parser>(args: &[&str]) -> Result<C, clap::Error> {
    let command = C::command().mut_arg("server", |arg| arg.env(None));
    C::from_arg_matches(&command.try_get_matches_from(argv(args))?)
}

fn run(args: &[&str]) -> RunArgs {
    match parse::<Run>(args) {
        Ok(parsed) => parsed.run,
        Err(e) => panic!("{args:?} refused: {e}"),
    }
}

/// Why clap refused `args`, and what it said.
fn run_refused(args: &[&str]) -> (ErrorKind, String) {
    match parse::<Run>(args) {
        Ok(_) => panic!("{args:?} accepted"),
        Err(e) => (e.kind(), e.to_string()),
    }
}

fn repl(args: &[&str]) -> Result<ReplArgs, (ErrorKind, String)> {
    parse::<Repl>(args).map(|parsed| parsed.repl).map_err(|e| (e.kind(), e.to_string()))
}

fn template(args: &[&str]) -> Result<TemplateAction, ErrorKind> {
    Template::try_parse_from(argv(args)).map(|t| t.action).map_err(|e| e.kind())
}

#[test]
fn the_definitions_satisfy_clap() {
    Run::command().debug_assert();
    Template::command().debug_assert();
    Repl::command().debug_assert();
}

// The value parsers.

#[test]
fn a_timeout_is_seconds_from_zero_to_the_wire_limit() {
    assert_eq!(parse_timeout("0"), Ok(0.0));
    assert_eq!(parse_timeout("2.5"), Ok(2.5));
    assert_eq!(parse_timeout("4000000"), Ok(4_000_000.0));
    for text in ["-1", "-0.5", "4000000.5", "1e300", "NaN", "inf", "-inf"] {
        let err = parse_timeout(text).unwrap_err();
        assert!(err.contains(text) && err.contains("no limit"), "{text}: {err}");
    }
    for text in ["", "ten", "5s", "1,5"] {
        let err = parse_timeout(text).unwrap_err();
        assert!(err.contains("not a number"), "{text:?}: {err}");
    }
}

#[test]
fn an_env_variable_splits_at_its_first_equals_sign() {
    assert_eq!(parse_env("A=1"), Ok(("A".into(), "1".into())));
    assert_eq!(parse_env("A="), Ok(("A".into(), String::new())));
    assert_eq!(parse_env("A=b=c"), Ok(("A".into(), "b=c".into())));
    let err = parse_env("A").unwrap_err();
    assert!(err.contains("NAME=VALUE"), "{err}");
}

#[test]
fn an_upload_splits_at_its_last_colon() {
    assert_eq!(parse_upload("in.txt:data/in.txt"), Ok((PathBuf::from("in.txt"), "data/in.txt".into())));
    assert_eq!(parse_upload("a:b:c"), Ok((PathBuf::from("a:b"), "c".into())));
    assert_eq!(parse_upload("/tmp/x:/home/user/x"), Ok((PathBuf::from("/tmp/x"), "/home/user/x".into())));
    for arg in ["in.txt", ":guest", "local:", ":", ""] {
        let err = parse_upload(arg).unwrap_err();
        assert!(err.contains("LOCAL:GUEST"), "{arg:?}: {err}");
    }
}

#[test]
fn a_download_is_kept_under_its_own_name_unless_told() {
    assert_eq!(parse_download("out.txt"), Ok(("out.txt".into(), PathBuf::from("out.txt"))));
    assert_eq!(parse_download("dir/out.txt"), Ok(("dir/out.txt".into(), PathBuf::from("out.txt"))));
    assert_eq!(
        parse_download("/home/user/r.csv:local/r.csv"),
        Ok(("/home/user/r.csv".into(), PathBuf::from("local/r.csv")))
    );
    assert_eq!(parse_download("a:b:c"), Ok(("a".into(), PathBuf::from("b:c"))));
    for arg in ["", ":local", "guest:", "dir/", ":"] {
        let err = parse_download(arg).unwrap_err();
        assert!(err.contains("GUEST[:LOCAL]"), "{arg:?}: {err}");
    }
}

// Whole command lines: `vmexec run`.

#[test]
fn code_alone_takes_every_default() {
    let args = run(&["-c", "print(1)"]);
    assert_eq!((args.code.as_deref(), args.file.as_deref()), (Some("print(1)"), None));
    assert!(args.lang.is_none());
    assert_eq!(args.timeout, 30.0);
    assert!(args.env.is_empty() && args.upload.is_empty() && args.download.is_empty());
    assert_eq!((args.cwd, args.stdin, args.memory_limit), (None, None, None));
    assert_eq!(args.output_limit, proto::DEFAULT_OUTPUT_LIMIT);
    assert!(!args.json && !args.cold && !args.fresh);
    let vm = args.vm;
    assert_eq!((vm.memory, vm.cpus, vm.accel, vm.debug), (256, 1, Accel::Auto, false));
    assert_eq!((vm.kernel, vm.rootfs), (None, None));
}

#[test]
fn a_file_or_stdin_may_hold_the_code() {
    let args = run(&["script.py"]);
    assert_eq!((args.code, args.file.as_deref()), (None, Some(Path::new("script.py"))));
    assert_eq!(run(&["-"]).file.as_deref(), Some(Path::new("-")));
    assert_eq!(run(&["--code", "x"]).code.as_deref(), Some("x"));
}

#[test]
fn code_and_a_file_conflict() {
    assert_eq!(run_refused(&["-c", "print(1)", "script.py"]).0, ErrorKind::ArgumentConflict);
    assert_eq!(run_refused(&["script.py", "-c", "print(1)"]).0, ErrorKind::ArgumentConflict);
}

#[test]
fn code_or_a_file_is_required() {
    assert_eq!(run_refused(&[]).0, ErrorKind::MissingRequiredArgument);
    assert_eq!(run_refused(&["--json", "--timeout", "5"]).0, ErrorKind::MissingRequiredArgument);
}

#[test]
fn every_option_is_read() {
    let args = run(&[
        "-l",
        "sh",
        "-c",
        "echo",
        "--timeout",
        "2.5",
        "--env",
        "A=1",
        "--env",
        "B=",
        "--cwd",
        "/tmp",
        "--json",
        "--output-limit",
        "100",
        "--cold",
        "--fresh",
        "--stdin",
        "in.txt",
        "--memory-limit",
        "64",
    ]);
    assert_eq!(args.lang.map(LangArg::language), Some(Language::Sh));
    assert_eq!(args.timeout, 2.5);
    assert_eq!(args.env, [("A".into(), "1".into()), ("B".into(), String::new())]);
    assert_eq!(args.cwd.as_deref(), Some("/tmp"));
    assert!(args.json && args.cold && args.fresh);
    assert_eq!(args.output_limit, 100);
    assert_eq!(args.stdin.as_deref(), Some(Path::new("in.txt")));
    assert_eq!(args.memory_limit, Some(64));
}

#[test]
fn a_bad_timeout_is_refused() {
    assert_eq!(run(&["-c", "x", "--timeout", "0"]).timeout, 0.0);
    for bad in ["-1", "ten", "4000001"] {
        // `=`: clap takes a bare `-1` for an option.
        let (kind, message) = run_refused(&["-c", "x", &format!("--timeout={bad}")]);
        assert_eq!(kind, ErrorKind::ValueValidation, "{bad}");
        assert!(message.contains("--timeout"), "{message}");
    }
}

#[test]
fn guest_memory_is_64_mib_to_64_gib() {
    assert_eq!(run(&["-c", "x", "--memory", "64"]).vm.memory, 64);
    assert_eq!(run(&["-c", "x", "--memory", "65536"]).vm.memory, 65536);
    for bad in ["63", "65537", "0", "-1", "lots"] {
        let (_, message) = run_refused(&["-c", "x", &format!("--memory={bad}")]);
        assert!(message.contains("--memory"), "{bad}: {message}");
    }
}

#[test]
fn guest_cpus_are_one_to_eight() {
    assert_eq!(run(&["-c", "x", "--cpus", "1"]).vm.cpus, 1);
    assert_eq!(run(&["-c", "x", "--cpus", "8"]).vm.cpus, 8);
    for bad in ["0", "9"] {
        let (kind, message) = run_refused(&["-c", "x", "--cpus", bad]);
        assert_eq!(kind, ErrorKind::ValueValidation, "{bad}");
        assert!(message.contains("--cpus"), "{message}");
    }
}

#[test]
fn the_accelerator_is_one_of_its_names() {
    for (name, accel) in [("auto", Accel::Auto), ("kvm", Accel::Kvm), ("tcg", Accel::Tcg)] {
        assert_eq!(run(&["-c", "x", "--accel", name]).vm.accel, accel);
    }
    let (kind, message) = run_refused(&["-c", "x", "--accel", "xen"]);
    assert_eq!(kind, ErrorKind::InvalidValue);
    assert!(message.contains("xen") && message.contains("kvm"), "{message}");
}

#[test]
fn a_memory_limit_of_zero_is_refused() {
    assert_eq!(run(&["-c", "x", "--memory-limit", "1"]).memory_limit, Some(1));
    let (kind, message) = run_refused(&["-c", "x", "--memory-limit", "0"]);
    assert_eq!(kind, ErrorKind::ValueValidation);
    assert!(message.contains("--memory-limit"), "{message}");
}

#[test]
fn an_env_option_without_equals_is_refused() {
    let (kind, message) = run_refused(&["-c", "x", "--env", "A"]);
    assert_eq!(kind, ErrorKind::ValueValidation);
    assert!(message.contains("NAME=VALUE"), "{message}");
}

#[test]
fn uploads_and_downloads_repeat_in_order() {
    let args = run(&[
        "-c",
        "x",
        "--upload",
        "a.txt:in/a.txt",
        "--upload",
        "b:b",
        "--download",
        "out/r.csv",
        "--download",
        "log.txt:logs/run.txt",
    ]);
    assert_eq!(args.upload, [(PathBuf::from("a.txt"), "in/a.txt".into()), (PathBuf::from("b"), "b".into())]);
    assert_eq!(
        args.download,
        [("out/r.csv".into(), PathBuf::from("r.csv")), ("log.txt".into(), PathBuf::from("logs/run.txt"))]
    );
}

#[test]
fn a_misshapen_upload_or_download_is_refused() {
    for (option, bad) in
        [("--upload", "a.txt"), ("--upload", ":b"), ("--download", "dir/"), ("--download", ":b")]
    {
        let (kind, message) = run_refused(&["-c", "x", option, bad]);
        assert_eq!(kind, ErrorKind::ValueValidation, "{option} {bad}");
        assert!(message.contains(option), "{message}");
    }
}

#[test]
fn languages_and_their_alias_parse() {
    for (name, language) in [("python", Language::Python), ("sh", Language::Sh), ("shell", Language::Sh)] {
        let lang = run(&["-c", "x", "--lang", name]).lang.expect("a language was given");
        assert_eq!(lang.language(), language, "{name}");
    }
    assert_eq!(run_refused(&["-c", "x", "-l", "ruby"]).0, ErrorKind::InvalidValue);
}

#[test]
fn a_lang_arg_is_the_api_language() {
    assert_eq!(LangArg::Python.language(), Language::Python);
    assert_eq!(LangArg::Sh.language(), Language::Sh);
}

// The VM's settings.

#[test]
fn vm_args_make_the_vm_config() {
    let args = run(&[
        "-c",
        "x",
        "--memory",
        "1024",
        "--cpus",
        "4",
        "--accel",
        "tcg",
        "--debug",
        "--kernel",
        "/k/vmlinux",
        "--rootfs",
        "/r/rootfs.erofs",
    ]);
    let config = args.vm.config();
    assert_eq!((config.memory_mb, config.cpus, config.accel, config.debug), (1024, 4, Accel::Tcg, true));
    assert_eq!(config.kernel, Path::new("/k/vmlinux"));
    assert_eq!(config.rootfs, Path::new("/r/rootfs.erofs"));
    // `--cold` is the run's, not the VM's: a template is made for VmArgs.
    assert!(!config.cold);
}

#[test]
fn vm_args_left_out_keep_the_config_defaults() {
    let config = run(&["-c", "x"]).vm.config();
    let default = VmConfig::default();
    assert_eq!((config.memory_mb, config.cpus, config.accel, config.debug), (256, 1, Accel::Auto, false));
    assert_eq!((config.kernel, config.rootfs), (default.kernel, default.rootfs));
    assert_eq!(
        (config.qemu, config.cache_dir, config.boot_timeout),
        (default.qemu, default.cache_dir, default.boot_timeout)
    );
    assert!(!config.cold);
}

// `vmexec template` and `vmexec repl`.

#[test]
fn template_actions_parse() {
    match template(&["build", "--memory", "512", "--cpus", "2"]) {
        Ok(TemplateAction::Build(vm)) => assert_eq!((vm.memory, vm.cpus), (512, 2)),
        _ => panic!("not a build"),
    }
    assert!(
        matches!(template(&["status", "--accel", "kvm"]), Ok(TemplateAction::Status(vm)) if vm.accel == Accel::Kvm)
    );
    assert!(matches!(template(&["clear"]), Ok(TemplateAction::Clear)));
}

#[test]
fn template_actions_refuse_what_they_do_not_take() {
    assert!(matches!(template(&["clear", "--memory", "512"]), Err(ErrorKind::UnknownArgument)));
    assert!(matches!(template(&["build", "--memory", "32"]), Err(ErrorKind::ValueValidation)));
    assert!(matches!(template(&["rebuild"]), Err(ErrorKind::InvalidSubcommand)));
    assert!(template(&[]).is_err());
}

#[test]
fn a_repl_is_python_unless_told() {
    let parse = |args: &[&str]| repl(args).unwrap_or_else(|e| panic!("{args:?} refused: {}", e.1));
    let repl = parse(&[]);
    assert_eq!((repl.lang.language(), repl.cold, repl.vm.memory), (Language::Python, false, 256));
    assert_eq!((repl.server, repl.token_file, repl.timeout), (None, None, None));
    let repl = parse(&["-l", "shell", "--cold", "--memory", "128"]);
    assert_eq!((repl.lang.language(), repl.cold, repl.vm.memory), (Language::Sh, true, 128));
}

// `--server`: the same commands sent to a service.

#[test]
fn a_run_may_go_to_a_service() {
    let args = run(&["-c", "x", "--server", "unix:/tmp/pid1.sock"]);
    assert_eq!(args.server, Some(Server::Unix("/tmp/pid1.sock".into())));
    assert_eq!(args.token_file, None);
    let args = run(&[
        "-c",
        "x",
        "--server",
        "http://127.0.0.1:8470",
        "--token-file",
        "/etc/pid1/token",
        // What the API takes goes with it.
        "--timeout",
        "5",
        "--env",
        "A=1",
        "--stdin",
        "in.txt",
        "--upload",
        "a:b",
        "--download",
        "c",
        "--memory-limit",
        "64",
        "--output-limit",
        "10",
        "--json",
    ]);
    assert_eq!(args.server, Some(Server::Http { host: "127.0.0.1".into(), port: 8470 }));
    assert_eq!(args.token_file.as_deref(), Some(Path::new("/etc/pid1/token")));
    assert!(args.json && args.timeout == 5.0 && args.memory_limit == Some(64));
}

#[test]
fn a_bad_server_is_refused_with_the_forms_to_give() {
    for bad in ["", "localhost:8470", "https://h:1", "unix:", "http://h:x"] {
        let (kind, message) = run_refused(&["-c", "x", &format!("--server={bad}")]);
        assert_eq!(kind, ErrorKind::ValueValidation, "{bad}");
        assert!(message.contains("--server"), "{message}");
    }
}

#[test]
fn what_only_a_local_vm_has_is_refused_with_a_server() {
    for local in [
        &["--cold"][..],
        &["--fresh"],
        &["--cwd", "/tmp"],
        &["--memory", "512"],
        &["--cpus", "2"],
        &["--accel", "tcg"],
        &["--debug"],
        &["--kernel", "k"],
        &["--rootfs", "r"],
        &["--offline"],
        &["--no-preload"],
    ] {
        let mut args = vec!["-c", "x", "--server", "unix:/s"];
        args.extend_from_slice(local);
        let (kind, message) = run_refused(&args);
        assert_eq!(kind, ErrorKind::ArgumentConflict, "{local:?}");
        assert!(message.contains(local[0]) && message.contains("--server"), "{message}");
        // The same flag alone is a local run's.
        assert!(run(&[&["-c", "x"][..], local].concat()).server.is_none());
    }
}

#[test]
fn packages_go_to_the_server_with_the_run() {
    let args = run(&["-c", "x", "--server", "unix:/s", "-p", "six==1.17.0", "-p", "numpy"]);
    assert_eq!(args.vm.packages, ["six==1.17.0", "numpy"]);
}

#[test]
fn a_token_file_needs_a_server() {
    let (kind, message) = run_refused(&["-c", "x", "--token-file", "t"]);
    assert_eq!(kind, ErrorKind::MissingRequiredArgument);
    assert!(message.contains("--server"), "{message}");
    assert_eq!(repl(&["--token-file", "t"]).map(|_| ()).unwrap_err().0, ErrorKind::MissingRequiredArgument);
}

#[test]
fn the_server_may_come_from_the_environment() {
    for command in [Run::command(), Repl::command()] {
        let server = command.get_arguments().find(|a| a.get_id() == "server").expect("--server");
        assert_eq!(server.get_env().and_then(|e| e.to_str()), Some("PID1_SERVER"));
    }
}

#[test]
fn a_repl_may_go_to_a_service_with_a_step_timeout() {
    let args = repl(&["--server", "unix:/s", "-l", "sh", "--timeout", "2.5", "--token-file", "t"])
        .unwrap_or_else(|e| panic!("refused: {}", e.1));
    assert_eq!(args.server, Some(Server::Unix("/s".into())));
    assert_eq!((args.timeout, args.token_file.as_deref()), (Some(2.5), Some(Path::new("t"))));
    // A local session's statements have no limit to set.
    let (kind, message) = repl(&["--timeout", "5"]).map(|_| ()).unwrap_err();
    assert_eq!(kind, ErrorKind::MissingRequiredArgument);
    assert!(message.contains("--server"), "{message}");
    assert_eq!(
        repl(&["--server", "unix:/s", "--timeout=-1"]).map(|_| ()).unwrap_err().0,
        ErrorKind::ValueValidation
    );
    for local in [&["--cold"][..], &["--memory", "512"], &["--accel", "kvm"]] {
        let (kind, _) = repl(&[&["--server", "unix:/s"][..], local].concat()).map(|_| ()).unwrap_err();
        assert_eq!(kind, ErrorKind::ArgumentConflict, "{local:?}");
    }
}
