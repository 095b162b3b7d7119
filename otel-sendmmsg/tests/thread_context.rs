//! End to end, as root: programs that publish their active span the OTEP 4947 way (the TLS
//! variable `otel_thread_ctx_v1` pointing to a Thread-Local Context Record), in every TLS access
//! model the OTEP requires a reader to handle, switch spans between `sendmmsg` calls, detach,
//! and publish hostile records. Each syscall span must have exactly the parent published at the
//! moment of its call, and a call with no valid record must be a root. No uprobe is involved:
//! the entry hook reads the record.
//!
//! The writers are C programs of our own (`tests/thread_context/`), built here with gcc.

mod support;

use std::{
    io::{BufRead, BufReader, Write},
    net::UdpSocket,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use support::*;

/// The writers, built by [`build_writers`], or already built where `THREAD_CONTEXT_WRITERS`
/// says (in a qemu guest, which has no compiler).
fn writers() -> PathBuf {
    match std::env::var_os("THREAD_CONTEXT_WRITERS") {
        Some(dir) => PathBuf::from(dir),
        None => build_writers(),
    }
}

/// The variants to run: all, or those `THREAD_CONTEXT_VARIANTS` lists (comma-separated).
fn chosen(variant: &str) -> bool {
    std::env::var("THREAD_CONTEXT_VARIANTS").map_or(true, |list| list.split(',').any(|v| v == variant))
}

/// Builds the writers into a fresh directory.
fn build_writers() -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/thread_context");
    let dir = std::env::temp_dir().join(format!("otel-sendmmsg-thread-context-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for file in ["writer.c", "writer_lib.c", "not_tls.c"] {
        std::fs::copy(source.join(file), dir.join(file)).unwrap();
    }
    let export = "-Wl,--export-dynamic-symbol=otel_thread_ctx_v1";
    let builds: &[&[&str]] = &[
        &[
            "-shared",
            "-fPIC",
            "-mtls-dialect=gnu2",
            "-Wl,-soname,libwriter_tlsdesc.so",
            "-o",
            "libwriter_tlsdesc.so",
            "writer_lib.c",
        ],
        &[
            "-shared",
            "-fPIC",
            "-mtls-dialect=gnu",
            "-Wl,-soname,libwriter_gd.so",
            "-o",
            "libwriter_gd.so",
            "writer_lib.c",
        ],
        &[
            "-shared",
            "-fPIC",
            "-ftls-model=initial-exec",
            "-Wl,-soname,libwriter_ie.so",
            "-o",
            "libwriter_ie.so",
            "writer_lib.c",
        ],
        &["-pthread", export, "-o", "writer", "writer.c"],
        &["-pthread", "-no-pie", export, "-o", "writer_nopie", "writer.c"],
        &["-pthread", "-static-pie", export, "-o", "writer_static_pie", "writer.c"],
        &[
            "-pthread",
            "-DTLS_IN_LIBRARY",
            "-o",
            "writer_tlsdesc",
            "writer.c",
            "./libwriter_tlsdesc.so",
            "-Wl,-rpath,$ORIGIN",
        ],
        &[
            "-pthread",
            "-DTLS_IN_LIBRARY",
            "-o",
            "writer_gd",
            "writer.c",
            "./libwriter_gd.so",
            "-Wl,-rpath,$ORIGIN",
        ],
        &[
            "-pthread",
            "-DTLS_IN_LIBRARY",
            "-o",
            "writer_ie",
            "writer.c",
            "./libwriter_ie.so",
            "-Wl,-rpath,$ORIGIN",
        ],
        &["-pthread", "-DTLS_DLOPEN", "-o", "writer_dlopen", "writer.c", "-ldl"],
        &["-pthread", export, "-o", "not_tls", "not_tls.c"],
    ];
    for args in builds {
        let status =
            Command::new("gcc").arg("-O2").args(*args).current_dir(&dir).status().expect("running gcc");
        assert!(status.success(), "gcc {args:?}");
    }
    dir
}

/// One writer program, stepped command by command.
struct Writer {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
    pid: u32,
}

impl Writer {
    fn start(binary: &Path, sink: &UdpSocket, env: &[(&str, &str)]) -> Writer {
        let mut child = Command::new(binary)
            .arg(sink.local_addr().unwrap().port().to_string())
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
        let stdin = child.stdin.take().unwrap();
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let first = lines.recv_timeout(Duration::from_secs(10)).expect("the writer's first line");
        let pid = first.split_whitespace().nth(1).unwrap().parse().unwrap();
        assert_eq!(lines.recv_timeout(Duration::from_secs(10)).as_deref(), Ok("ready"));
        Writer { child, stdin, lines, pid }
    }

    /// Runs one command; its answer must be `ok ...`.
    fn run(&mut self, command: &str) -> String {
        writeln!(self.stdin, "{command}").unwrap();
        let answer = self.lines.recv_timeout(Duration::from_secs(10)).expect("an answer");
        assert!(answer.starts_with("ok"), "{command}: {answer}");
        answer
    }

    fn send(&mut self) {
        assert_eq!(self.run("send"), "ok sent 2");
    }

    fn exit(mut self) {
        self.run("exit");
        assert!(self.child.wait().unwrap().success());
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What a span's parent must be.
#[derive(Debug, PartialEq)]
enum Parent {
    Root,
    /// (trace id, span id), hex.
    Span(String, String),
}

fn ids(n: u8) -> (String, String) {
    (format!("{:02x}", n).repeat(16), format!("{:02x}", 0x80 + n).repeat(8))
}

fn publish(writer: &mut Writer, n: u8, flags: u8) -> Parent {
    let (trace, span) = ids(n);
    writer.run(&format!("publish {trace} {span} {flags}"));
    Parent::Span(trace, span)
}

/// The sequence every writer goes through once its process is read: switching spans, another
/// thread, detaching both ways, an unsampled span, and two hostile records. Returns the parent
/// each exported call must have, in call order (the unsampled call exports nothing).
fn switch_detach_and_mislead(writer: &mut Writer) -> Vec<Parent> {
    let mut expected = Vec::new();
    expected.push(publish(writer, 1, 1));
    writer.send();
    expected.push(publish(writer, 2, 1));
    writer.send();
    // Another thread, with no record of its own.
    assert!(writer.run("tsend").starts_with("ok sent 2 tid "));
    expected.push(Parent::Root);
    writer.run("null");
    writer.send();
    expected.push(Parent::Root);
    // Unsampled: the app exports no such trace, so neither do we.
    publish(writer, 3, 0);
    writer.send();
    publish(writer, 4, 1);
    writer.run("invalid");
    writer.send();
    expected.push(Parent::Root);
    writer.run("unmapped");
    writer.send();
    expected.push(Parent::Root);
    // Valid and sampled, but claiming 64 KiB of attributes past the end of its page.
    writer.run("huge");
    writer.send();
    expected.push(Parent::Root);
    expected.push(publish(writer, 5, 1));
    writer.send();
    expected
}

/// The process's spans in call order, against what was expected; the warm-up call (made before
/// the process was read) first, a root.
fn check_parents(receiver: &Receiver, pid: u32, expected: &[Parent], variant: &str) {
    let mut spans = receiver.spans_of(pid);
    spans.sort_by_key(|s| s.span.start_time_unix_nano);
    let got: Vec<Parent> = spans
        .iter()
        .map(|s| {
            if s.span.parent_span_id.is_empty() {
                Parent::Root
            } else {
                Parent::Span(hex(&s.span.trace_id), hex(&s.span.parent_span_id))
            }
        })
        .collect();
    let mut want = vec![Parent::Root];
    want.extend(expected.iter().map(|p| match p {
        Parent::Root => Parent::Root,
        Parent::Span(t, s) => Parent::Span(t.clone(), s.clone()),
    }));
    assert_eq!(got, want, "{variant}");
    let published: Vec<String> = (1..=5).map(|n| ids(n).0).collect();
    for span in spans.iter().filter(|s| s.span.parent_span_id.is_empty()) {
        assert!(
            !published.contains(&hex(&span.span.trace_id)),
            "{variant}: a root starts a trace of its own"
        );
    }
}

fn start_sidecar(receiver: &Receiver) -> Sidecar {
    Sidecar::start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ("RUST_LOG", "info,otel_sendmmsg::probes::thread_context=debug"),
    ])
}

/// Every access model: an executable's own variable (local-exec, PIE, non-PIE and static-pie),
/// a library linked at start with TLSDESC, legacy global-dynamic and initial-exec accesses, and
/// libraries loaded with dlopen after the first call (TLSDESC forced into dynamic TLS through
/// the thread's DTV, and global-dynamic, dynamic by default).
#[test]
fn each_call_has_exactly_the_parent_published_at_that_moment_in_every_tls_model() {
    require_root();
    let _alone = one_sidecar_at_a_time();
    let dir = writers();
    let receiver = Receiver::start(Protocol::Grpc);
    let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
    let sidecar = start_sidecar(&receiver);
    let static_variants =
        ["writer", "writer_nopie", "writer_static_pie", "writer_tlsdesc", "writer_gd", "writer_ie"];
    let mut runs = Vec::new();
    for variant in static_variants.into_iter().filter(|v| chosen(v)) {
        let mut writer = Writer::start(&dir.join(variant), &sink, &[]);
        // The program's first call names it to the sidecar, which reads it then.
        writer.send();
        wait_until_thread_context_read(&sidecar, writer.pid);
        let expected = switch_detach_and_mislead(&mut writer);
        runs.push((variant.to_owned(), writer.pid, expected));
        writer.exit();
    }
    let dlopened = [("libwriter_tlsdesc.so", "glibc.rtld.optional_static_tls=0"), ("libwriter_gd.so", "")];
    let dlopened: Vec<_> =
        dlopened.into_iter().filter(|(library, _)| chosen(&format!("dlopen-{library}"))).collect();
    for &(library, tunables) in &dlopened {
        let mut writer = Writer::start(&dir.join("writer_dlopen"), &sink, &[("GLIBC_TUNABLES", tunables)]);
        writer.send();
        writer.run(&format!("dlopen {}", dir.join(library).display()));
        // Loaded after the first call: found when the sidecar reads the calling process's
        // mappings again.
        wait_until_thread_context_read(&sidecar, writer.pid);
        let expected = switch_detach_and_mislead(&mut writer);
        runs.push((format!("dlopen {library}"), writer.pid, expected));
        writer.exit();
    }
    let log = sidecar.stderr();
    for (variant, pid, _) in &runs[runs.len() - dlopened.len()..] {
        let line =
            log.lines().find(|l| l.contains(&format!("otel_thread_ctx_v1 of process {pid} "))).unwrap();
        assert!(line.contains("module 2 at"), "{variant} goes through the DTV: {line}");
    }
    let stopped = sidecar.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    for (variant, pid, expected) in &runs {
        check_parents(&receiver, *pid, expected, variant);
    }
    let n = runs.len() as u64;
    assert!(n > 0, "no variant chosen");
    for counter in ["parent_not_sampled", "thread_context_unreadable", "thread_context_malformed"] {
        assert_eq!(summary_count(&stopped.stderr, counter), n, "{counter}: one per writer");
    }
    if std::env::var_os("THREAD_CONTEXT_WRITERS").is_none() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// The same on Debian's 6.1 kernel under qemu (its own BTF offsets for the thread pointer, its
/// own helpers), for an executable's own variable, a library's through TLSDESC, and a dlopen'd
/// one through the DTV: the test above runs in the guest with writers built here.
#[test]
fn the_same_parents_on_debian_6_1() {
    require_root();
    let _alone = one_sidecar_at_a_time();
    let dir = build_writers();
    let binaries = support::qemu::release_binaries("otel-sendmmsg");
    let tests = std::env::current_exe().unwrap();
    let mut files: Vec<(PathBuf, PathBuf)> =
        vec![(tests.clone(), tests.clone()), (binaries["otel-sendmmsg"].clone(), PathBuf::from(SIDECAR))];
    for name in ["writer", "writer_tlsdesc", "libwriter_tlsdesc.so", "writer_dlopen", "libwriter_gd.so"] {
        files.push((dir.join(name), dir.join(name)));
    }
    let staged: Vec<(&Path, &Path)> = files.iter().map(|(a, b)| (a.as_path(), b.as_path())).collect();
    let guest = support::qemu::Guest::debian_6_1(&staged);
    let kernel = guest.kernel_release();
    let script = format!(
        "echo \"KERNEL $(uname -r)\"\n\
         THREAD_CONTEXT_WRITERS={dir} THREAD_CONTEXT_VARIANTS=writer,writer_tlsdesc,dlopen-libwriter_gd.so \
         {tests} --exact each_call_has_exactly_the_parent_published_at_that_moment_in_every_tls_model \
         --test-threads=1 2>&1\n",
        dir = dir.display(),
        tests = tests.display(),
    );
    let run = guest.run(&script, Duration::from_secs(300));
    let console = run.console.replace('\r', "");
    eprintln!("6.1 guest, {:?}:\n{console}", run.duration);
    assert!(console.contains(&format!("KERNEL {kernel}")), "the guest did not boot:\n{console}");
    assert!(console.contains("test result: ok. 1 passed"), "on {kernel}:\n{console}");
    let _ = std::fs::remove_dir_all(dir);
}

/// A process that exports `otel_thread_ctx_v1` as a plain variable, pointing at a record that
/// looks valid: not the standard's variable, so it is never read and its calls are roots.
#[test]
fn a_symbol_of_that_name_that_is_not_tls_is_never_read() {
    require_root();
    let _alone = one_sidecar_at_a_time();
    let dir = build_writers();
    let receiver = Receiver::start(Protocol::Grpc);
    let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
    let sidecar = start_sidecar(&receiver);
    let mut writer = Writer::start(&dir.join("not_tls"), &sink, &[]);
    writer.send();
    let refused = format!("thread context: process {} maps", writer.pid);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !sidecar.stderr().lines().any(|l| l.contains(&refused) && l.contains("not as a TLS variable")) {
        assert!(Instant::now() < deadline, "never looked at:\n{}", sidecar.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
    writer.send();
    let pid = writer.pid;
    writer.exit();
    let stopped = sidecar.stop();
    assert!(!stopped.stderr.contains(&format!("otel_thread_ctx_v1 of process {pid} ")), "{}", stopped.stderr);
    let spans = receiver.spans_of(pid);
    assert_eq!(spans.len(), 2);
    assert!(spans.iter().all(|s| s.span.parent_span_id.is_empty()), "roots");
    let _ = std::fs::remove_dir_all(dir);
}

/// Every standard sampler (`OTEL_TRACES_SAMPLER`) with published contexts: sampled and unsampled
/// parents whose trace ids' random bits (the lowest 56) lie below and above one half, and roots.
/// Exactly the calls each sampler keeps are exported, each with its published parent.
#[test]
fn each_standard_sampler_keeps_exactly_its_calls_under_published_parents() {
    require_root();
    let _alone = one_sidecar_at_a_time();
    let dir = writers();
    // (trace id, span id, sampled): random bits (the trace id's lowest 56) below and above one
    // half, sampled and not; the bits above them say the opposite, so only those 56 decide.
    let parents = [
        ("ee".repeat(9) + &"11".repeat(7), "a1".repeat(8), 1),
        ("dd".repeat(9) + &"22".repeat(7), "a2".repeat(8), 0),
        ("11".repeat(9) + &"ee".repeat(7), "a3".repeat(8), 1),
        ("22".repeat(9) + &"dd".repeat(7), "a4".repeat(8), 0),
    ];
    // Which of the four parents' calls each sampler keeps, whether it keeps roots (None: a
    // random half of them), and how many calls it counts as parent_not_sampled.
    let samplers: [(&str, Option<&str>, [bool; 4], Option<bool>, u64); 6] = [
        ("parentbased_always_on", None, [true, false, true, false], Some(true), 2),
        ("parentbased_always_off", None, [true, false, true, false], Some(false), 2),
        ("parentbased_traceidratio", Some("0.5"), [true, false, true, false], None, 2),
        ("always_on", None, [true, true, true, true], Some(true), 0),
        ("always_off", None, [false, false, false, false], Some(false), 0),
        ("traceidratio", Some("0.5"), [true, true, false, false], None, 0),
    ];
    for (sampler, arg, kept, roots_kept, unsampled) in samplers {
        let receiver = Receiver::start(Protocol::Grpc);
        let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut vars = vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint.as_str()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("OTEL_TRACES_SAMPLER", sampler),
        ];
        vars.extend(arg.map(|a| ("OTEL_TRACES_SAMPLER_ARG", a)));
        let sidecar = Sidecar::start(&vars);
        let mut writer = Writer::start(&dir.join("writer"), &sink, &[]);
        // A root, which also names the process to the sidecar (when the sampler keeps it).
        writer.send();
        wait_until_thread_context_read(&sidecar, writer.pid);
        let mut expected = Vec::new();
        for ((trace, span, flags), keep) in parents.iter().zip(kept) {
            writer.run(&format!("publish {trace} {span} {flags}"));
            writer.send();
            if keep {
                expected.push(Parent::Span(trace.clone(), span.clone()));
            }
        }
        writer.run("null");
        writer.send();
        let pid = writer.pid;
        writer.exit();
        let stopped = sidecar.stop();
        assert!(stopped.status.success(), "{sampler}: {}", stopped.stderr);
        let got: Vec<Parent> = receiver
            .spans_of(pid)
            .iter()
            .map(|s| match s.span.parent_span_id.is_empty() {
                true => Parent::Root,
                false => Parent::Span(hex(&s.span.trace_id), hex(&s.span.parent_span_id)),
            })
            .collect();
        let (roots, children): (Vec<Parent>, Vec<Parent>) = got.into_iter().partition(|p| *p == Parent::Root);
        assert_eq!(children, expected, "{sampler}: the calls under published parents");
        match roots_kept {
            Some(true) => assert_eq!(roots.len(), 2, "{sampler}: every root"),
            Some(false) => assert_eq!(roots.len(), 0, "{sampler}: no root"),
            // Drawn at random: head_sampling_draws_the_given_share_of_roots counts the share.
            None => assert!(roots.len() <= 2, "{sampler}"),
        }
        assert_eq!(summary_count(&stopped.stderr, "parent_not_sampled"), unsampled, "{sampler}");
    }
    if std::env::var_os("THREAD_CONTEXT_WRITERS").is_none() {
        let _ = std::fs::remove_dir_all(dir);
    }
}
