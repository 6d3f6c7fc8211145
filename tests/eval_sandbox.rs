//! The sandbox contains hostile programs, marks them failed, and carries on with the next ones.
//! Needs python3 and a JDK; the network and file checks need namespaces (root or user namespaces):
//! without them they fail under CI=true and are skipped loudly otherwise.
#![cfg(target_os = "linux")]

use std::net::TcpListener;
use std::time::Duration;

use flexlora::eval::sandbox::{Isolation, Limit, Limits, Outcome, RunResult, Sandbox, SandboxConfig};
use flexlora::eval::tasks::{Language, Program};

/// Each test passes its own `uid_set`, so that the leftover-process check of one test never sees
/// the programs of another test running at the same time.
fn sandbox(python: Limits, uid_set: u32) -> Sandbox {
    let java = Limits { wall: Duration::from_secs(15), ..Limits::java() };
    let uid_base = SandboxConfig::default().uid_base + uid_set * 0x10_0000;
    let config = SandboxConfig { workers: 2, python, java, uid_base, ..Default::default() };
    let sandbox = Sandbox::new(config).expect("sandbox");
    if sandbox.isolation() != Isolation::Full {
        let msg = format!("sandbox isolation here is {:?}, not Full (tests run as root in CI)", sandbox.isolation());
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{msg}");
        eprintln!("\n!!! WARNING: {msg}\n");
    }
    sandbox
}

/// (name, program, is the outcome right).
type Case<P> = (&'static str, P, fn(Outcome) -> bool);

fn py(source: &str) -> Program {
    Program { language: Language::Python, source: source.to_string() }
}

fn isolated(sandbox: &Sandbox) -> bool {
    if sandbox.isolation() == Isolation::None {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "no namespaces: network and file isolation cannot be tested");
        eprintln!("\n!!! SKIPPED network and file checks: the sandbox has no namespaces here\n");
        return false;
    }
    true
}

fn expect(name: &str, r: &RunResult, ok: impl Fn(Outcome) -> bool) {
    assert!(ok(r.outcome), "{name}: got {:?} ({}) after {:?}\nstdout: {}\nstderr: {}", r.outcome, r.reason, r.duration, r.stdout, r.stderr);
}

/// Processes still running under the sandbox uids (there must be none after a batch).
fn leftover_processes(sandbox: &Sandbox) -> Vec<String> {
    let Some(uids) = sandbox.uids() else { return Vec::new() };
    let entries = std::fs::read_dir("/proc").expect("/proc");
    entries
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("status")).ok())
        .filter(|s| {
            let uid = s.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|l| l.split_whitespace().next()?.parse().ok());
            let zombie = s.lines().any(|l| l.starts_with("State:") && l.contains('Z'));
            uid.is_some_and(|u: u32| uids.contains(&u)) && !zombie
        })
        .map(|s| s.lines().take(3).collect::<Vec<_>>().join(" "))
        .collect()
}

#[test]
fn python_verdicts_and_hostile_programs() {
    // 10 s of wall clock: enough for "20 GB in steps" to reach the memory limit (zeroing ~2 GB)
    // on a loaded 2-core machine, where 4 s sometimes timed out first.
    let limits = Limits { wall: Duration::from_secs(10), ..Limits::python() };
    let sandbox = sandbox(limits.clone(), 1);
    let cases: Vec<Case<String>> = vec![
        ("correct", "def add(a, b):\n    return a + b\nassert add(1, 2) == 3\n".into(), |o| o == Outcome::Passed),
        ("wrong", "def add(a, b):\n    return a - b\nassert add(1, 2) == 3\n".into(), |o| o == Outcome::FailedAssertion),
        ("exit(0) before the asserts", "exit(0)\nassert 1 == 2\n".into(), |o| o == Outcome::RuntimeError),
        ("sys.exit(0) in the function", "import sys\ndef f():\n    sys.exit(0)\nassert f() == 1\n".into(), |o| o == Outcome::RuntimeError),
        ("os._exit(0)", "import os\nos._exit(0)\nassert False\n".into(), |o| o == Outcome::RuntimeError),
        ("raise SystemExit", "raise SystemExit\n".into(), |o| o == Outcome::RuntimeError),
        ("infinite loop", "while True:\n    pass\n".into(), |o| o == Outcome::Timeout),
        ("fork bomb", "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n".into(), |o| {
            matches!(o, Outcome::Timeout | Outcome::KilledByLimit(Limit::Processes))
        }),
        ("20 GB at once", "x = bytearray(20 * 1024**3)\n".into(), |o| o == Outcome::KilledByLimit(Limit::Memory)),
        ("20 GB in steps", "a = []\nfor _ in range(320):\n    a.append(bytearray(64 * 1024**2))\n".into(), |o| {
            o == Outcome::KilledByLimit(Limit::Memory)
        }),
        ("10 GB file", "with open('big.bin', 'wb') as f:\n    for _ in range(10 * 1024):\n        f.write(b'\\0' * 2**20)\n".into(), |o| {
            o == Outcome::KilledByLimit(Limit::FileSize)
        }),
        ("endless output", "while True:\n    print('x' * 1000)\n".into(), |o| o == Outcome::KilledByLimit(Limit::Output)),
        ("endless stderr", "import sys\nwhile True:\n    sys.stderr.write('y' * 1000)\n".into(), |o| {
            o == Outcome::KilledByLimit(Limit::Output)
        }),
        ("reading stdin", "line = input()\nassert line == 'never'\n".into(), |o| o == Outcome::RuntimeError),
        ("correct after all that", "assert sorted([3, 1, 2]) == [1, 2, 3]\n".into(), |o| o == Outcome::Passed),
    ];
    let programs: Vec<Program> = cases.iter().map(|(_, src, _)| py(src)).collect();
    let results = sandbox.run_all(&programs);
    assert_eq!(results.len(), cases.len());
    for ((name, _, ok), r) in cases.iter().zip(&results) {
        expect(name, r, ok);
        eprintln!("{name:30} {:?} in {:.2} s: {}", r.outcome, r.duration.as_secs_f64(), r.reason);
    }
    let stdin = &results[13];
    assert!(stdin.stderr.contains("EOFError") && stdin.duration < Duration::from_secs(2), "stdin must be closed: {stdin:?}");
    assert!(results[2].reason.contains("completion token"), "{}", results[2].reason);
    assert!(results[11].stdout.len() <= limits.output_bytes, "captured output must be capped");
    let left = leftover_processes(&sandbox);
    assert!(left.is_empty(), "sandbox processes still running: {left:?}");
}

#[test]
fn cpu_time_limit() {
    let sandbox = sandbox(Limits { wall: Duration::from_secs(20), cpu_seconds: 2, ..Limits::python() }, 2);
    let r = sandbox.run(&py("while True:\n    pass\n"));
    // Killed by the CPU limit (3 s of CPU at most), not by the 20 s wall clock.
    expect("busy loop", &r, |o| o == Outcome::KilledByLimit(Limit::Cpu));
}

#[test]
fn network_is_unreachable() {
    let sandbox = sandbox(Limits::python(), 3);
    if !isolated(&sandbox) {
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").expect("listener");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("addr").port();
    let src = format!("import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=3)\ns.sendall(b'escaped')\n");
    let r = sandbox.run(&py(&src));
    expect("connect to the host's loopback", &r, |o| o == Outcome::RuntimeError);
    eprintln!("connect to 127.0.0.1:{port}: {}", r.reason);
    match listener.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the sandboxed program reached the listener: {other:?}"),
    }
}

#[test]
fn files_outside_the_work_directory_are_safe() {
    let sandbox = sandbox(Limits::python(), 4);
    if !isolated(&sandbox) {
        return;
    }
    let dir = std::env::temp_dir().join(format!("flexlora-canary-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("canary dir");
    let canary = dir.join("canary.txt");
    std::fs::write(&canary, "alive").expect("canary");
    let escape = std::env::temp_dir().join(format!("flexlora-escape-{}", std::process::id()));
    let (c, d, e) = (canary.display(), dir.display(), escape.display());
    let attacks = [
        format!("import os\nos.remove('{c}')\n"),
        format!("open('{c}', 'w').write('dead')\n"),
        format!("import shutil\nshutil.rmtree('{d}')\n"),
        format!("import os\nos.rename('{c}', '{c}.moved')\n"),
        format!("open('{e}', 'w').write('escaped')\n"),
        "import os\nos.chmod('/tmp', 0o700)\n".to_string(),
    ];
    let programs: Vec<Program> = attacks.iter().map(|a| py(a)).collect();
    let results = sandbox.run_all(&programs);
    // The second layer behind the read-only mounts: no root inside.
    let unprivileged = py("import os\nassert 0 not in (os.getuid(), os.geteuid(), os.getgid(), os.getegid())\n");
    let privileges = (sandbox.isolation() == Isolation::Full).then(|| sandbox.run(&unprivileged));
    // Look, clean up, then judge, so that a failure leaves nothing behind.
    let alive = std::fs::read_to_string(&canary);
    let escaped = escape.exists();
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&escape);
    for (a, r) in attacks.iter().zip(&results) {
        eprintln!("{:50} {}", a.trim().replace('\n', "; "), r.reason);
        expect(a, r, |o| o == Outcome::RuntimeError);
    }
    if let Some(r) = privileges {
        expect("runs as an unprivileged uid", &r, |o| o == Outcome::Passed);
    }
    assert_eq!(alive.ok().as_deref(), Some("alive"), "the canary was deleted or modified");
    assert!(!escaped, "a sandboxed program created {}", escape.display());
}

const JAVA_TEST: &str = "\nclass Main {\n    public static void main(String[] args) throws Exception {\n        \
    if (Add.add(1, 2) != 3) {\n            throw new java.lang.Exception(\"test case 0 did not pass\");\n        }\n    }\n}\n";

fn java(solution_body: &str) -> Program {
    let source = format!(
        "import java.util.*;\n\nclass Add {{\n    public static int add(int a, int b) {{\n{solution_body}\n    }}\n}}\n{JAVA_TEST}"
    );
    Program { language: Language::Java, source }
}

#[test]
fn java_verdicts_and_hostile_programs() {
    let sandbox = sandbox(Limits::python(), 5);
    let cases: Vec<Case<Program>> = vec![
        ("correct", java("        return a + b;"), |o| o == Outcome::Passed),
        ("wrong", java("        return a - b;"), |o| o == Outcome::FailedAssertion),
        ("compile error", java("        return a + ;"), |o| o == Outcome::CompileError),
        ("System.exit(0) before the tests", java("        System.exit(0);\n        return 0;"), |o| o == Outcome::RuntimeError),
        ("exception in the solution", java("        return a / (b - b);"), |o| o == Outcome::RuntimeError),
        (
            "20 GB",
            java("        List<byte[]> l = new ArrayList<>();\n        for (int i = 0; i < 20; i++) l.add(new byte[1 << 30]);\n        return l.size();"),
            |o| o == Outcome::KilledByLimit(Limit::Memory),
        ),
        ("infinite loop", java("        while (true) { a++; }"), |o| o == Outcome::Timeout),
        ("correct after all that", java("        return b + a;"), |o| o == Outcome::Passed),
    ];
    let mut programs: Vec<Program> = cases.iter().map(|(_, p, _)| p.clone()).collect();
    // System.exit(0) from a static initializer runs before main does anything.
    let static_exit = programs[0].source.replace("class Add {", "class Add {\n    static { System.exit(0); }");
    programs.push(Program { language: Language::Java, source: static_exit });
    let results = sandbox.run_all(&programs);
    for ((name, _, ok), r) in cases.iter().zip(&results) {
        expect(name, r, ok);
        eprintln!("{name:32} {:?} in {:.2} s: {}", r.outcome, r.duration.as_secs_f64(), r.reason);
    }
    expect("static initializer System.exit(0)", &results[cases.len()], |o| o == Outcome::RuntimeError);
    assert!(results[1].reason.contains("test case 0 did not pass"), "{}", results[1].reason);
    assert!(results[2].reason.contains("error:"), "{}", results[2].reason);
    assert!(leftover_processes(&sandbox).is_empty());
}
