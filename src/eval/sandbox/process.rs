//! One sandboxed process: the isolation set up between fork and exec, the supervision loop
//! (timeout, output cap, reaping), and the reading of its exit into an `Outcome`.

use super::*;

/// A command line and the limits it runs under.
pub(super) struct Run<'a> {
    pub argv: Vec<OsString>,
    pub limits: &'a Limits,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Exit {
    Code(i32),
    Signal(i32),
    /// wait4 failed; should not happen.
    Lost,
}

pub(super) struct Finished {
    pub exit: Exit,
    /// User + system CPU time of the process itself.
    pub cpu: Duration,
    pub timed_out: bool,
    pub overflow: bool,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Sandbox {
    /// Starts `run` in `dir` under this sandbox's isolation and waits for it within its limits.
    pub(super) fn execute(&self, run: &Run, dir: &Path, slot: &Slot) -> io::Result<Finished> {
        let setup = Setup::new(self.isolation, dir, self.config.uid_base + slot.0 as u32, run.limits)?;
        let mut cmd = Command::new(&run.argv[0]);
        cmd.args(&run.argv[1..])
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", dir)
            .env("TMPDIR", dir)
            .env("LANG", "C.UTF-8")
            // String hashing, hence set iteration order, the same on every run.
            .env("PYTHONHASHSEED", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: the closure runs in the child between fork and exec; it only makes system calls
        // on data prepared before the fork and allocates nothing. (No run-time check: a debug
        // assertion failing there could not report, the child has no harness.)
        unsafe { cmd.pre_exec(move || setup.apply()) };
        let child = if self.isolation == Isolation::Full { spawn_in_new_pid_namespace(&mut cmd)? } else { cmd.spawn()? };
        Ok(supervise(child, run.limits, self.isolation))
    }
}

/// Spawns `cmd` as init of a fresh pid namespace: when it dies, the kernel kills and reaps every
/// process it started, including ones that left its process group. unshare(CLONE_NEWPID) applies
/// to later children of the calling thread and works only while those would still land in the
/// thread's own namespace, so the thread is moved back with setns right after the spawn.
fn spawn_in_new_pid_namespace(cmd: &mut Command) -> io::Result<std::process::Child> {
    let own = File::open("/proc/thread-self/ns/pid")?;
    // SAFETY: plain system call on an integer flag (no memory passed); affects only children of
    // the calling thread.
    check(unsafe { libc::unshare(libc::CLONE_NEWPID) })?;
    let child = cmd.spawn();
    // SAFETY: `own` is an open namespace file; setns to the thread's active pid namespace.
    debug_assert!(own.as_raw_fd() >= 0);
    let back = check(unsafe { libc::setns(own.as_raw_fd(), libc::CLONE_NEWPID) });
    let child = child?;
    if let Err(e) = back {
        // Cannot happen as root; refuse to go on with a thread whose children land in a dead namespace.
        kill_tree(child.id() as i32);
        reap(child.id() as i32, true);
        return Err(e);
    }
    Ok(child)
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn cstr(s: impl AsRef<OsStr>) -> io::Result<CString> {
    CString::new(s.as_ref().as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// Everything the child does before exec, prepared in the parent.
struct Setup {
    isolation: Isolation,
    dir: CString,
    root: CString,
    /// Sandbox uid and gid under `Full`.
    id: u32,
    /// (file, contents) written under `UserNamespace`: map the caller's uid and gid to themselves.
    id_maps: [(CString, Vec<u8>); 3],
    /// soft, hard for CPU, DATA, AS, FSIZE, NPROC, CORE, NOFILE (the order of `apply`).
    rlimits: [(u64, u64); 7],
}

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}
const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const AT_RECURSIVE: libc::c_int = 0x8000;

impl Setup {
    fn new(isolation: Isolation, dir: &Path, id: u32, l: &Limits) -> io::Result<Setup> {
        // SAFETY: getuid/getgid take no arguments and cannot fail (nothing to check).
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let mut nproc = l.processes;
        if isolation == Isolation::None {
            // RLIMIT_NPROC counts every task of the real uid, the harness's included.
            nproc += tasks_of_uid(uid);
        }
        let wanted = [(l.cpu_seconds, l.cpu_seconds + 1), (l.data_bytes, l.data_bytes), (l.address_space_bytes, l.address_space_bytes)];
        let rest = [(l.file_size_bytes, l.file_size_bytes), (nproc, nproc), (0, 0), (512, 512)];
        let mut rlimits = [(0, 0); 7];
        for (i, w) in wanted.into_iter().chain(rest).enumerate() {
            rlimits[i] = w;
        }
        Ok(Setup {
            isolation,
            dir: cstr(dir)?,
            root: cstr("/")?,
            id,
            id_maps: [
                (cstr("/proc/self/setgroups")?, b"deny".to_vec()),
                (cstr("/proc/self/uid_map")?, format!("{uid} {uid} 1").into_bytes()),
                (cstr("/proc/self/gid_map")?, format!("{gid} {gid} 1").into_bytes()),
            ],
            rlimits,
        })
    }

    /// In the child, after fork: new session, namespaces, read-only filesystem except the work
    /// directory, limits, then (as root) the unprivileged uid. Order matters: namespaces and
    /// mounts need privileges that the last step gives up.
    fn apply(&self) -> io::Result<()> {
        // SAFETY (whole function): system calls on pointers to memory owned by self: NUL-terminated
        // CStrings, byte vectors passed with their own length, and locals. (Runs between fork
        // and exec, where a failing debug assertion could not report: see `execute`.)
        unsafe {
            // Own session and process group, so that the whole group can be killed.
            check(libc::setsid())?;
            match self.isolation {
                Isolation::Full => check(libc::unshare(libc::CLONE_NEWNET | libc::CLONE_NEWNS))?,
                Isolation::UserNamespace => {
                    check(libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNET | libc::CLONE_NEWNS))?;
                    for (path, text) in &self.id_maps {
                        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                        check(fd)?;
                        let n = libc::write(fd, text.as_ptr().cast(), text.len());
                        libc::close(fd);
                        if n != text.len() as isize {
                            return Err(io::Error::last_os_error());
                        }
                    }
                }
                Isolation::None => {}
            }
            if self.isolation != Isolation::None {
                self.read_only_except_dir()?;
            }
            check(libc::chdir(self.dir.as_ptr()))?;
            let resources = [
                libc::RLIMIT_CPU,
                libc::RLIMIT_DATA,
                libc::RLIMIT_AS,
                libc::RLIMIT_FSIZE,
                libc::RLIMIT_NPROC,
                libc::RLIMIT_CORE,
                libc::RLIMIT_NOFILE,
            ];
            for (res, &(soft, hard)) in resources.into_iter().zip(&self.rlimits) {
                let mut old = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
                check(libc::getrlimit(res, &mut old))?;
                // Without root a hard limit can only be lowered.
                let cap = if self.isolation == Isolation::Full { u64::MAX } else { old.rlim_max };
                let new = libc::rlimit { rlim_cur: soft.min(cap) as _, rlim_max: hard.min(cap) as _ };
                check(libc::setrlimit(res, &new))?;
            }
            if self.isolation == Isolation::Full {
                check(libc::setgroups(0, std::ptr::null()))?;
                check(libc::setgid(self.id))?;
                check(libc::setuid(self.id))?;
            }
            // No setuid binary can give privileges back; die with the supervising thread.
            check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
            check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0))?;
        }
        Ok(())
    }

    /// In the new mount namespace: every mount read-only and nosuid, then the work directory
    /// (bind-mounted onto itself to be a mount of its own) writable again.
    ///
    /// # Safety
    /// Only in the sandboxed child between fork and exec (from `apply`), inside the new mount
    /// namespace: it remounts that namespace's mounts, which no other thread can observe.
    unsafe fn read_only_except_dir(&self) -> io::Result<()> {
        let (null, no_data) = (std::ptr::null(), std::ptr::null());
        // Nothing done here may propagate back to the host's mounts.
        check(libc::mount(null, self.root.as_ptr(), null, libc::MS_REC | libc::MS_PRIVATE, no_data))?;
        check(libc::mount(self.dir.as_ptr(), self.dir.as_ptr(), null, libc::MS_BIND, no_data))?;
        let size = std::mem::size_of::<MountAttr>();
        let ro = MountAttr { attr_set: MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID, attr_clr: 0, propagation: 0, userns_fd: 0 };
        let rw = MountAttr { attr_set: 0, attr_clr: MOUNT_ATTR_RDONLY, propagation: 0, userns_fd: 0 };
        let setattr = |path: &CString, flags: libc::c_int, attr: &MountAttr| {
            libc::syscall(libc::SYS_mount_setattr, libc::AT_FDCWD, path.as_ptr(), flags, attr as *const MountAttr, size) as libc::c_int
        };
        check(setattr(&self.root, AT_RECURSIVE, &ro))?;
        check(setattr(&self.dir, 0, &rw))
    }
}

/// Tasks (processes and threads) currently owned by `uid`, from /proc; 0 where unreadable.
fn tasks_of_uid(uid: u32) -> u64 {
    let Ok(entries) = std::fs::read_dir("/proc") else { return 0 };
    let field = |status: &str, key: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(key))?;
        line[key.len()..].split_whitespace().next()?.parse().ok()
    };
    entries
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("status")).ok())
        .filter(|s| field(s, "Uid:") == Some(uid as u64))
        .map(|s| field(&s, "Threads:").unwrap_or(1))
        .sum()
}

/// Kills the program: its process group, and the process itself (init of its pid namespace
/// under `Full`, which takes every descendant with it).
fn kill_tree(pid: i32) {
    // SAFETY: plain system calls; pid is our unreaped child, so its number is not reused. Checked
    // always, not only in debug builds: kill(-1) or kill(0) would signal far more than the child.
    assert!(pid > 1, "kill_tree({pid}): not a child's pid");
    unsafe {
        libc::kill(-pid, libc::SIGKILL);
        libc::kill(pid, libc::SIGKILL);
    }
}

fn reap(pid: i32, block: bool) -> Option<(Exit, Duration)> {
    let (mut status, flags) = (0, if block { 0 } else { libc::WNOHANG });
    // SAFETY: rusage is plain data (integers and timevals), for which all zeros is valid.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: pointers to locals; pid is one child's (wait4(-1 or 0) would reap any child).
        debug_assert!(pid > 0);
        let r = unsafe { libc::wait4(pid, &mut status, flags, &mut ru) };
        if r == pid {
            break;
        }
        if r == 0 {
            return None;
        }
        if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return Some((Exit::Lost, Duration::ZERO));
        }
    }
    let tv = |t: libc::timeval| Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64);
    let exit = if libc::WIFEXITED(status) {
        Exit::Code(libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        Exit::Signal(libc::WTERMSIG(status))
    } else {
        Exit::Lost
    };
    Some((exit, tv(ru.ru_utime) + tv(ru.ru_stime)))
}

/// After the program exits, output still in the pipes is read for at most this long.
const DRAIN: Duration = Duration::from_millis(200);

/// Waits for the child within its wall-clock limit, reading stdout and stderr with a cap.
fn supervise(mut child: std::process::Child, limits: &Limits, isolation: Isolation) -> Finished {
    let pid = child.id() as i32;
    let deadline = Instant::now() + limits.wall;
    let mut streams: [Option<File>; 2] =
        [child.stdout.take().map(|s| File::from(OwnedFd::from(s))), child.stderr.take().map(|s| File::from(OwnedFd::from(s)))];
    let mut bufs = [Vec::new(), Vec::new()];
    let (mut exit, mut exited_at, mut timed_out, mut overflow) = (None, None, false, false);
    loop {
        let now = Instant::now();
        if exit.is_none() {
            exit = reap(pid, false);
            if exit.is_some() {
                exited_at = Some(now);
                if isolation != Isolation::Full {
                    // Descendants still in the group (no pid namespace to take them down).
                    kill_tree(pid);
                }
            } else if now >= deadline || overflow {
                timed_out = !overflow;
                kill_tree(pid);
                exit = reap(pid, true);
                exited_at = Some(now);
            }
        }
        let open = streams.iter().any(Option::is_some);
        if exit.is_some() && (!open || exited_at.is_some_and(|t| now >= t + DRAIN)) {
            break;
        }
        let wait = deadline.saturating_duration_since(now).clamp(Duration::from_millis(1), Duration::from_millis(20));
        overflow |= pump(&mut streams, &mut bufs, limits.output_bytes, wait);
    }
    let (exit, cpu) = exit.unwrap_or((Exit::Lost, Duration::ZERO));
    let [stdout, stderr] = bufs;
    Finished { exit, cpu, timed_out, overflow, stdout, stderr }
}

/// Waits up to `wait` for output and reads what is there, keeping at most `cap` bytes per stream.
/// True when a stream went past the cap.
fn pump(streams: &mut [Option<File>; 2], bufs: &mut [Vec<u8>; 2], cap: usize, wait: Duration) -> bool {
    let mut fds: Vec<libc::pollfd> =
        streams.iter().flatten().map(|f| libc::pollfd { fd: f.as_raw_fd(), events: libc::POLLIN, revents: 0 }).collect();
    if fds.is_empty() {
        std::thread::sleep(wait);
        return false;
    }
    // SAFETY: fds is a valid array of fds.len() pollfd, of open files.
    debug_assert!(fds.iter().all(|p| p.fd >= 0));
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, wait.as_millis() as libc::c_int) };
    if n <= 0 {
        return false;
    }
    let mut over = false;
    let mut chunk = [0u8; 64 << 10];
    for (stream, buf) in streams.iter_mut().zip(bufs.iter_mut()) {
        let Some(file) = stream else { continue };
        let ready = fds.iter().any(|p| p.fd == file.as_raw_fd() && p.revents != 0);
        if !ready {
            continue;
        }
        match file.read(&mut chunk) {
            Ok(0) | Err(_) => *stream = None,
            Ok(k) => {
                let keep = k.min(cap.saturating_sub(buf.len()));
                buf.extend_from_slice(&chunk[..keep]);
                over |= keep < k;
            }
        }
    }
    over
}

/// The verdict on a run (for Java: the run after a successful compile).
pub(super) fn judge(language: Language, f: &Finished, token: &str, limits: &Limits) -> (Outcome, String) {
    if let Some(v) = stopped(f, limits) {
        return v;
    }
    let stderr = String::from_utf8_lossy(&f.stderr);
    let token_seen = f.stdout.windows(token.len()).any(|w| w == token.as_bytes());
    match (f.exit, language) {
        (Exit::Code(0), _) if token_seen => (Outcome::Passed, String::new()),
        (Exit::Code(0), _) => (Outcome::RuntimeError, "exited with status 0 before the tests finished (no completion token)".into()),
        (_, Language::Python) => python_error(&stderr),
        (_, Language::Java) => java_error(&stderr),
    }
}

/// The verdict on a failed javac.
pub(super) fn judge_compile(f: &Finished, limits: &Limits) -> (Outcome, String) {
    if let Some(v) = stopped(f, limits) {
        return v;
    }
    let stderr = String::from_utf8_lossy(&f.stderr);
    if stderr.contains("OutOfMemoryError") {
        return (Outcome::KilledByLimit(Limit::Memory), "javac ran out of memory".into());
    }
    let first = stderr.lines().find(|l| l.contains("error:")).unwrap_or_else(|| last_line(&stderr));
    (Outcome::CompileError, first.trim().to_string())
}

/// Timeouts, output overflow and deaths by signal: the same for every language and stage.
fn stopped(f: &Finished, limits: &Limits) -> Option<(Outcome, String)> {
    if f.timed_out {
        return Some((Outcome::Timeout, format!("still running after {:.1} s (wall clock)", limits.wall.as_secs_f64())));
    }
    if f.overflow {
        return Some((Outcome::KilledByLimit(Limit::Output), format!("printed more than {} bytes", limits.output_bytes)));
    }
    let cpu = format!("used {:.1} s of CPU (limit {} s)", f.cpu.as_secs_f64(), limits.cpu_seconds);
    match f.exit {
        Exit::Signal(libc::SIGXCPU) => Some((Outcome::KilledByLimit(Limit::Cpu), cpu)),
        Exit::Signal(libc::SIGKILL) if f.cpu.as_secs() >= limits.cpu_seconds => Some((Outcome::KilledByLimit(Limit::Cpu), cpu)),
        Exit::Signal(libc::SIGXFSZ) => Some((Outcome::KilledByLimit(Limit::FileSize), "wrote past the file size limit".into())),
        Exit::Signal(libc::SIGKILL) => Some((Outcome::RuntimeError, "killed by SIGKILL (out of memory?)".into())),
        Exit::Signal(s) => Some((Outcome::RuntimeError, format!("killed by signal {s}"))),
        Exit::Lost => Some((Outcome::RuntimeError, "the exit status was lost".into())),
        Exit::Code(_) => None,
    }
}

fn last_line(text: &str) -> &str {
    text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("")
}

fn python_error(stderr: &str) -> (Outcome, String) {
    let last = last_line(stderr);
    let outcome = if last.starts_with("AssertionError") {
        Outcome::FailedAssertion
    } else if last.starts_with("MemoryError") {
        Outcome::KilledByLimit(Limit::Memory)
    } else if last.contains("[Errno 27]") {
        Outcome::KilledByLimit(Limit::FileSize)
    } else if (last.starts_with("BlockingIOError") && last.contains("[Errno 11]")) || last.contains("can't start new thread") {
        Outcome::KilledByLimit(Limit::Processes)
    } else {
        Outcome::RuntimeError
    };
    // The failing source line is the one above the exception in the traceback (after Python
    // 3.11's `^^^^` marker lines, which are skipped).
    let marker = |l: &str| l.trim().chars().all(|c| matches!(c, '^' | '~'));
    let lines: Vec<&str> = stderr.lines().filter(|l| !marker(l)).collect();
    let reason = match lines.len() {
        0 => "exited with a non-zero status and no message".to_string(),
        1 => lines[0].trim().to_string(),
        n => format!("{} | {}", lines[n - 2].trim(), lines[n - 1].trim()),
    };
    (outcome, reason)
}

fn java_error(stderr: &str) -> (Outcome, String) {
    let has = |s: &str| stderr.contains(s);
    if has("unable to create native thread") || has("unable to create new native thread") {
        return (Outcome::KilledByLimit(Limit::Processes), "could not create a thread".into());
    }
    if has("java.lang.OutOfMemoryError") || has("insufficient memory for the Java Runtime") {
        return (Outcome::KilledByLimit(Limit::Memory), "out of memory".into());
    }
    if has("File too large") {
        return (Outcome::KilledByLimit(Limit::FileSize), "wrote past the file size limit".into());
    }
    const MAIN: &str = "Exception in thread \"main\" ";
    let Some(at) = stderr.find(MAIN) else {
        let last = last_line(stderr);
        return (Outcome::RuntimeError, if last.is_empty() { "exited with a non-zero status".into() } else { last.trim().into() });
    };
    let mut lines = stderr[at + MAIN.len()..].lines();
    let exception = lines.next().unwrap_or("").trim().to_string();
    // Thrown by the test class itself (its checks throw on a wrong answer), not from the solution.
    let from_test = lines.find(|l| l.trim_start().starts_with("at ")).is_some_and(|l| l.trim_start().starts_with("at Main.main("));
    (if from_test { Outcome::FailedAssertion } else { Outcome::RuntimeError }, exception)
}
