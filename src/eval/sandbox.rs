//! Runs untrusted generated programs (Python with `python3`, Java with `javac` then `java`) and
//! says whether their tests passed. Owns process isolation, limits and the verdict; knows nothing
//! of datasets (a `Program` arrives fully assembled, see `tasks::Task::program`).
//!
//! Each program runs in a fresh temporary directory as a child process with: stdin on /dev/null;
//! stdout and stderr read through pipes with a size cap (killed on overflow); a wall-clock timeout
//! (the whole process tree is killed); rlimits on CPU time, private memory (RLIMIT_DATA), address
//! space, file size, process count, open files and core dumps. Isolation, chosen once by `Sandbox::new`
//! by trying each level in turn (see `Isolation`):
//! - `Full` (root): new network namespace (no interface is up, so no connection, not even to the
//!   host's 127.0.0.1), new mount namespace in which every mount is read-only except the work
//!   directory, new pid namespace per program (killing its init kills every process the program
//!   started, even ones that left the process group, and the kernel reaps them), then privileges
//!   are dropped to an unprivileged uid/gid that owns only the work directory. Each worker has its
//!   own uid (`uid_base + slot`) so RLIMIT_NPROC, which the kernel counts per uid, isolates a fork
//!   bomb in one worker from the JVMs of the others.
//! - `UserNamespace` (not root, user namespaces allowed): user + network + mount namespaces, same
//!   read-only view; the program keeps the caller's uid but has no capabilities after exec. No pid
//!   namespace: a process that calls setsid() escapes the final group kill.
//! - `None`: rlimits and process groups only. The network is open and every file the calling user
//!   may write is at risk. `Sandbox::new` prints a warning and every `RunResult` records it; run
//!   untrusted code this way only inside a throwaway container or VM.
//!
//! Not covered at any level: total memory of many processes (RLIMIT_DATA is per process; cgroups
//! would be needed) and disk use of many files each below the size limit within one time limit.
//!
//! Knowing the tests ran: a program that exits with status 0 before its tests (Python `exit(0)`,
//! `sys.exit(0)`, `os._exit(0)`; Java `System.exit(0)`) must not pass. The harness appends an
//! epilogue that prints a random per-run token and runs only after every test returned; a pass
//! needs exit status 0 and the token. The token is drawn when the program is written out, so a
//! completion cannot contain it; but the program can read its own source (or, for Java, the class
//! file) and introspect, so this stops accidental and naive early exits, not code written to
//! forge a pass. Containment above assumes hostile code; the verdict assumes a model, not an
//! adversary.

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{chown, DirBuilderExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::tasks::{Language, Program};
use crate::error::{Error, Result};

/// Which limit stopped a program.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Limit {
    Cpu,
    Memory,
    FileSize,
    Processes,
    Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Passed,
    /// A test failed: Python AssertionError, or an exception thrown by the Java test's own main.
    FailedAssertion,
    CompileError,
    Timeout,
    RuntimeError,
    KilledByLimit(Limit),
}

/// How strongly programs are isolated; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Isolation {
    Full,
    UserNamespace,
    None,
}

/// Per-process limits. For Java, javac and java each get them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub wall: Duration,
    /// RLIMIT_CPU soft limit; the hard limit (SIGKILL) is one second later.
    pub cpu_seconds: u64,
    /// RLIMIT_DATA: private writable memory (heap, anonymous maps). This is the memory limit that
    /// matters: the JVM reserves gigabytes of address space it never touches, which RLIMIT_AS
    /// would count, while RLIMIT_DATA counts only what becomes writable.
    pub data_bytes: u64,
    /// RLIMIT_AS: a loose backstop, large enough for the JVM's reservations.
    pub address_space_bytes: u64,
    pub file_size_bytes: u64,
    /// RLIMIT_NPROC: processes plus threads of the sandbox uid (a JVM alone runs ~20 threads).
    pub processes: u64,
    /// Cap on stdout and on stderr each; a program printing more is killed.
    pub output_bytes: usize,
}

const MIB: u64 = 1 << 20;

impl Limits {
    pub fn python() -> Self {
        Limits {
            wall: Duration::from_secs(10),
            cpu_seconds: 10,
            data_bytes: 1024 * MIB,
            address_space_bytes: 4096 * MIB,
            file_size_bytes: 16 * MIB,
            processes: 32,
            output_bytes: 256 << 10,
        }
    }

    /// With `JVM_FLAGS` (-Xmx512m, serial GC, small code cache): normal programs need well under
    /// 1 GiB of data; a 20 GB allocation ends in OutOfMemoryError.
    pub fn java() -> Self {
        Limits {
            wall: Duration::from_secs(30),
            cpu_seconds: 30,
            data_bytes: 1536 * MIB,
            address_space_bytes: 8192 * MIB,
            file_size_bytes: 16 * MIB,
            processes: 128,
            output_bytes: 256 << 10,
        }
    }
}

/// JVM options for javac (each prefixed with -J) and java: a bounded heap so that allocation
/// failures are Java OutOfMemoryErrors rather than native mmap failures, and the cheapest startup
/// (serial GC, C1 only, no perf-data file in /tmp).
const JVM_FLAGS: [&str; 6] = [
    "-Xmx512m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-XX:-UsePerfData",
    "-XX:ReservedCodeCacheSize=64m",
    "-XX:CompressedClassSpaceSize=128m",
];

#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Programs run in parallel (at most `MAX_WORKERS`).
    pub workers: usize,
    pub python: Limits,
    pub java: Limits,
    pub python_bin: String,
    pub javac_bin: String,
    pub java_bin: String,
    /// First sandbox uid (`Isolation::Full`); worker slot i runs as uid_base + i. The default
    /// depends on the process id so that two evaluations on one machine rarely share uids.
    pub uid_base: u32,
    /// Where the per-program directories are made.
    pub work_root: PathBuf,
}

pub const MAX_WORKERS: usize = 64;

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            python: Limits::python(),
            java: Limits::java(),
            python_bin: "python3".into(),
            javac_bin: "javac".into(),
            java_bin: "java".into(),
            uid_base: 0x4000_0000 + (std::process::id() % 0x4000) * MAX_WORKERS as u32,
            work_root: std::env::temp_dir(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RunResult {
    pub outcome: Outcome,
    /// Short explanation: the failing line, the limit hit, the missing completion token.
    pub reason: String,
    /// Captured output (at most `Limits::output_bytes` each), without the completion token.
    pub stdout: String,
    pub stderr: String,
    pub duration: Duration,
    pub isolation: Isolation,
}

pub struct Sandbox {
    config: SandboxConfig,
    isolation: Isolation,
    /// python, javac, java resolved against PATH once.
    bins: [PathBuf; 3],
}

impl Sandbox {
    /// Chooses the strongest isolation that works here by starting a trivial program under each.
    pub fn new(config: SandboxConfig) -> Result<Self> {
        std::fs::create_dir_all(&config.work_root).map_err(|e| Error::Sandbox {
            detail: format!("cannot create the work root {}: {e}", config.work_root.display()),
            hint: "set SandboxConfig::work_root to a writable directory",
        })?;
        let bins = [which(&config.python_bin), which(&config.javac_bin), which(&config.java_bin)];
        let mut sandbox = Sandbox { config, isolation: Isolation::None, bins };
        let mut why = Vec::new();
        for level in [Isolation::Full, Isolation::UserNamespace] {
            let slot = Slot::claim();
            let probe = Run { argv: vec!["/bin/sh".into(), "-c".into(), "exit 0".into()], limits: &sandbox.config.python };
            sandbox.isolation = level;
            match on_own_thread(|| sandbox.in_fresh_dir(&slot, |dir| sandbox.execute(&probe, dir, &slot))) {
                Ok(f) if matches!(f.exit, Exit::Code(0)) => return Ok(sandbox),
                Ok(f) => why.push(format!("{level:?}: probe ended with {:?} {}", f.exit, String::from_utf8_lossy(&f.stderr))),
                Err(e) => why.push(format!("{level:?}: {e}")),
            }
        }
        sandbox.isolation = Isolation::None;
        eprintln!(
            "WARNING: flexlora sandbox runs programs WITHOUT network or file isolation (no namespaces here: {}). \
             Generated code can reach the network and modify files of this user; use a throwaway container.",
            why.join("; ")
        );
        Ok(sandbox)
    }

    pub fn isolation(&self) -> Isolation {
        self.isolation
    }

    /// The uids programs may run as (`Isolation::Full` only), for checks that none are left.
    pub fn uids(&self) -> Option<std::ops::Range<u32>> {
        (self.isolation == Isolation::Full).then(|| self.config.uid_base..self.config.uid_base + MAX_WORKERS as u32)
    }

    /// Checks that the interpreter or compiler of `language` starts inside the sandbox.
    pub fn check_language(&self, language: Language) -> Result<()> {
        let (bin, arg) = match language {
            Language::Python => (&self.bins[0], "--version"),
            Language::Java => (&self.bins[1], "-version"),
        };
        let slot = Slot::claim();
        let run = Run { argv: vec![bin.into(), arg.into()], limits: self.limits(language) };
        match on_own_thread(|| self.in_fresh_dir(&slot, |dir| self.execute(&run, dir, &slot))) {
            Ok(f) if matches!(f.exit, Exit::Code(0)) => Ok(()),
            Ok(f) => Err(format!("`{} {arg}` ended with {:?}: {}", bin.display(), f.exit, String::from_utf8_lossy(&f.stderr))),
            Err(e) => Err(format!("cannot start `{}`: {e}", bin.display())),
        }
        .map_err(|detail| Error::Sandbox { detail, hint: "install python3 / a JDK (17+) or set the *_bin paths in SandboxConfig" })
    }

    /// Runs one program.
    pub fn run(&self, program: &Program) -> RunResult {
        self.run_all(std::slice::from_ref(program)).remove(0)
    }

    /// Runs every program on `config.workers` threads; results in input order. Never panics on
    /// a program's behaviour: a harness failure becomes a `RuntimeError` result with the reason.
    pub fn run_all(&self, programs: &[Program]) -> Vec<RunResult> {
        let next = AtomicUsize::new(0);
        let results: Vec<Mutex<Option<RunResult>>> = programs.iter().map(|_| Mutex::new(None)).collect();
        let workers = self.config.workers.clamp(1, MAX_WORKERS).min(programs.len());
        // Always on spawned threads: `Full` isolation moves the running thread's children into a
        // new pid namespace around each spawn, which must never touch the caller's thread.
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| {
                    let slot = Slot::claim();
                    loop {
                        let index = next.fetch_add(1, Ordering::Relaxed);
                        let Some(program) = programs.get(index) else { break };
                        let started = Instant::now();
                        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run_in_slot(program, &slot)))
                            .unwrap_or_else(|_| self.verdict(Outcome::RuntimeError, "harness panicked on this program", None, started));
                        *results[index].lock().unwrap_or_else(PoisonError::into_inner) = Some(result);
                    }
                });
            }
        });
        let missing = || self.verdict(Outcome::RuntimeError, "harness lost this result", None, Instant::now());
        results.into_iter().map(|m| m.into_inner().unwrap_or_else(PoisonError::into_inner).unwrap_or_else(missing)).collect()
    }

    fn limits(&self, language: Language) -> &Limits {
        match language {
            Language::Python => &self.config.python,
            Language::Java => &self.config.java,
        }
    }

    fn verdict(&self, outcome: Outcome, reason: &str, f: Option<&Finished>, started: Instant) -> RunResult {
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        RunResult {
            outcome,
            reason: reason.chars().take(300).collect(),
            stdout: f.map(|f| text(&f.stdout)).unwrap_or_default(),
            stderr: f.map(|f| text(&f.stderr)).unwrap_or_default(),
            duration: started.elapsed(),
            isolation: self.isolation,
        }
    }

    fn run_in_slot(&self, program: &Program, slot: &Slot) -> RunResult {
        let started = Instant::now();
        let token = format!("FLEXLORA-TESTS-DONE-{}", random_hex());
        let limits = self.limits(program.language);
        let ran = self.in_fresh_dir(slot, |dir| -> io::Result<(Outcome, String, Finished)> {
            match program.language {
                Language::Python => {
                    let epilogue = format!(
                        "\nimport os as _flexlora_os, sys as _flexlora_sys\n\
                         _flexlora_sys.stdout.write('\\n{token}\\n'); _flexlora_sys.stdout.flush(); _flexlora_os._exit(0)\n"
                    );
                    self.write_file(&dir.join("prog.py"), &(program.source.clone() + &epilogue), slot)?;
                    let argv = vec![self.bins[0].clone().into(), "-B".into(), "-s".into(), "prog.py".into()];
                    let f = self.execute(&Run { argv, limits }, dir, slot)?;
                    let (o, r) = judge(Language::Python, &f, &token, limits);
                    Ok((o, r, f))
                }
                Language::Java => {
                    let harness = format!(
                        "\nclass FlexloraHarness {{\n    public static void main(String[] args) throws Throwable {{\n        \
                         Main.main(args);\n        System.out.println(\"\\n{token}\");\n        System.out.flush();\n        \
                         System.exit(0);\n    }}\n}}\n"
                    );
                    self.write_file(&dir.join("Main.java"), &(program.source.clone() + &harness), slot)?;
                    let mut argv: Vec<OsString> = vec![self.bins[1].clone().into()];
                    argv.extend(JVM_FLAGS.iter().map(|f| format!("-J{f}").into()));
                    argv.extend(["-encoding", "UTF-8", "-nowarn", "-d", ".", "Main.java"].map(OsString::from));
                    let f = self.execute(&Run { argv, limits }, dir, slot)?;
                    if !matches!(f.exit, Exit::Code(0)) || f.timed_out || f.overflow {
                        let (o, r) = judge_compile(&f, limits);
                        return Ok((o, r, f));
                    }
                    // The running program has no business reading the source with the token.
                    let _ = std::fs::remove_file(dir.join("Main.java"));
                    let mut argv: Vec<OsString> = vec![self.bins[2].clone().into()];
                    argv.extend(JVM_FLAGS.iter().map(OsString::from));
                    argv.extend(["-Djava.io.tmpdir=.", "-cp", ".", "FlexloraHarness"].map(OsString::from));
                    let f = self.execute(&Run { argv, limits }, dir, slot)?;
                    let (o, r) = judge(Language::Java, &f, &token, limits);
                    Ok((o, r, f))
                }
            }
        });
        match ran {
            Ok((outcome, reason, mut f)) => {
                let shown = String::from_utf8_lossy(&f.stdout).replace(&format!("\n{token}\n"), "");
                f.stdout = shown.into_bytes();
                self.verdict(outcome, &reason, Some(&f), started)
            }
            Err(e) => self.verdict(Outcome::RuntimeError, &format!("sandbox could not run the program: {e}"), None, started),
        }
    }

    fn write_file(&self, path: &Path, text: &str, slot: &Slot) -> io::Result<()> {
        std::fs::write(path, text)?;
        if self.isolation == Isolation::Full {
            let id = self.config.uid_base + slot.0 as u32;
            chown(path, Some(id), Some(id))?;
        }
        Ok(())
    }

    /// Makes a private directory (owned by the slot's uid under `Full`), runs `f`, removes it.
    fn in_fresh_dir<T>(&self, slot: &Slot, f: impl FnOnce(&Path) -> io::Result<T>) -> io::Result<T> {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let name = format!("flexlora-sandbox-{}-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed), &random_hex()[..8]);
        let dir = self.config.work_root.join(name);
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        let result = (|| {
            if self.isolation == Isolation::Full {
                let id = self.config.uid_base + slot.0 as u32;
                chown(&dir, Some(id), Some(id))?;
            }
            f(&dir)
        })();
        let _ = std::fs::remove_dir_all(&dir);
        result
    }
}

/// Runs `f` on a new thread: `Full` isolation moves the running thread's future children into a
/// new pid namespace, which must never happen to a caller's thread.
fn on_own_thread<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| s.spawn(f).join()).unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// A global table of worker slots, so concurrent sandboxes in one process never share a uid.
struct Slot(usize);

static SLOTS: Mutex<u64> = Mutex::new(0);

impl Slot {
    fn claim() -> Slot {
        loop {
            {
                let mut used = SLOTS.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some(i) = (0..MAX_WORKERS).find(|i| *used & (1 << i) == 0) {
                    *used |= 1 << i;
                    return Slot(i);
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        *SLOTS.lock().unwrap_or_else(PoisonError::into_inner) &= !(1 << self.0);
    }
}

fn random_hex() -> String {
    let mut b = [0u8; 16];
    // SAFETY: getrandom writes at most b.len() bytes into b.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    debug_assert!(n <= b.len() as isize);
    if n != b.len() as isize {
        // Not secret, only unguessable by a completion written before this run: time will do.
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        b = (t ^ (std::process::id() as u128) << 64).to_le_bytes();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Resolves a program name against PATH (the child gets a minimal environment), preferring a copy
/// that any user can execute: under `Full` the program runs as an unprivileged uid, and a PATH
/// entry such as a version manager's shims under /root is out of its reach.
fn which(bin: &str) -> PathBuf {
    if bin.contains('/') {
        return PathBuf::from(bin);
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    let candidates: Vec<PathBuf> = std::env::split_paths(&path).map(|d| d.join(bin)).filter(|p| p.is_file()).collect();
    let reachable = candidates.iter().find(|p| world_executable(p));
    reachable.or(candidates.first()).cloned().unwrap_or_else(|| PathBuf::from(bin))
}

fn world_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let Ok(real) = path.canonicalize() else { return false };
    real.ancestors().all(|p| std::fs::metadata(p).is_ok_and(|m| m.permissions().mode() & 0o001 != 0))
}

mod process;
use process::{judge, judge_compile, Exit, Finished, Run};
