//! `procpy --trace FILE`: a Chrome trace-event timeline of every process. No VM in here.
//!
//! The top-level procpy creates a spool file next to the output and stores its path in
//! [`crate::switches`], which hands it to every procpy process (forked children inherit it,
//! exec'd ones get it in `PROCPY_TRACE`); each appends its events to it, one `write` per line with `O_APPEND`, so lines from
//! different processes never interleave and a process killed by SIGKILL simply stops adding
//! lines. When the top-level run returns, [`finish`] turns the spool into the JSON file.
//!
//! Spool lines are a tag, tab-separated fields for the converter, then one trace event (JSON):
//! - `E <event>`: written as is;
//! - `S <key> <ts> <event>` / `F <key> <ts> <event>`: a message's send (flow start) and receive
//!   (flow end). `key` hashes the message bytes and the channel's identity where both ends can
//!   see one; the converter pairs each `F` with the earliest unpaired earlier `S` of the same key
//!   (FIFO, as the channels are) and gives the pair its `id`; unpaired halves are dropped;
//! - `X <pid> <c|p> <event>`: an exit, reported by the process itself (`c`) or observed by its
//!   parent (`p`, the only report when the child was killed); the converter keeps one per pid.
//!
//! Off (the default), every hook costs one relaxed load of [`enabled`].

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt::Write as _;
use std::hash::{Hash, Hasher};
use std::io::{self, Write};
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicU8, Ordering::Relaxed};

/// The environment variable naming the spool for an exec'd procpy (internal: see [`crate::switches`]).
pub const ENV: &str = "PROCPY_TRACE";
/// When a spawned child was exec'd (µs, set by its parent when tracing): its boot starts there.
pub const EXEC_T0_ENV: &str = "PROCPY_TRACE_EXEC_T0";

static ON: AtomicBool = AtomicBool::new(false);
static FD: AtomicI32 = AtomicI32::new(-1);
/// When this process came to exist (exec start, or fork return), µs as f64 bits.
static BOOT_T0: AtomicU64 = AtomicU64::new(0);
/// How this process was started (an `ORIGIN_*`).
static ORIGIN: AtomicU8 = AtomicU8::new(ORIGIN_MAIN);
const ORIGIN_MAIN: u8 = 0;
const ORIGIN_FORK: u8 = 1;
const ORIGIN_SPAWN: u8 = 2;
const ORIGIN_FORKSERVER_CHILD: u8 = 3;
const ORIGIN_FORKSERVER: u8 = 4;

/// What kind of procpy process is starting (from its run mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The user's script (`procpy script.py`, `-c`, `-m`).
    Main,
    /// A child started by the spawn method.
    SpawnChild,
    /// The fork server.
    ForkServer,
}

/// Whether this process records events. One relaxed load: the hooks' whole cost when off.
#[inline(always)]
pub fn enabled() -> bool {
    ON.load(Relaxed)
}

/// `Some(now)` when tracing (a hook's start time), else `None` without reading the clock.
#[inline(always)]
pub fn clock() -> Option<f64> {
    if enabled() {
        Some(now())
    } else {
        None
    }
}

/// CLOCK_MONOTONIC in microseconds: comparable across processes on Linux.
/// Async-signal-safe (no allocation): the fork handler calls it.
pub fn now() -> f64 {
    use nix::time::{clock_gettime, ClockId};
    let t = clock_gettime(ClockId::CLOCK_MONOTONIC).unwrap_or(nix::sys::time::TimeSpec::new(0, 0));
    t.tv_sec() as f64 * 1e6 + t.tv_nsec() as f64 / 1e3
}

/// When this process came to exist (µs).
pub fn boot_t0() -> f64 {
    f64::from_bits(BOOT_T0.load(Relaxed))
}

/// The start method that made this process, if it was made by one.
pub fn start_method() -> Option<&'static str> {
    match ORIGIN.load(Relaxed) {
        ORIGIN_FORK => Some("fork"),
        ORIGIN_SPAWN => Some("spawn"),
        ORIGIN_FORKSERVER_CHILD => Some("forkserver"),
        _ => None,
    }
}

// ------------------------------------------------------------------ set-up

/// Top level: create (empty) the spool next to `out`; the caller stores its path in
/// [`crate::switches`] for this process and its children. Returns the spool's path and the
/// output's absolute path (the script may change directory).
pub fn create_spool(out: &Path) -> io::Result<(PathBuf, PathBuf)> {
    let out = std::path::absolute(out)?;
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}.spool", std::process::id()));
    let spool = out.with_file_name(name);
    // Fail now, with the output's name, rather than after the script ran.
    std::fs::OpenOptions::new().write(true).create(true).truncate(false).open(&out)?;
    std::fs::File::create(&spool)?;
    Ok((spool, out))
}

/// Every process, before its interpreter exists: start recording if [`crate::switches`] name a
/// spool. Emits the names of the main process or the fork server (children name themselves
/// in `_bootstrap`, once their multiprocessing name is known).
pub fn init_from_env(role: Role) {
    // Left in the environment (removing it would race other threads): only a spawn child reads
    // it, and its parent sets it afresh on every spawn.
    let exec_t0 = std::env::var(EXEC_T0_ENV).ok().and_then(|t| t.parse::<f64>().ok());
    let Some(path) = crate::switches::get().trace_spool.as_deref() else { return };
    let Ok(c) = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str()))
    else {
        return;
    };
    use nix::fcntl::OFlag;
    let flags = OFlag::O_WRONLY | OFlag::O_APPEND | OFlag::O_CLOEXEC;
    let Ok(fd) = nix::fcntl::open(c.as_c_str(), flags, nix::sys::stat::Mode::empty()) else {
        return;
    };
    // Kept open for the process's life (a fork child inherits it with `FD`).
    FD.store(std::os::fd::IntoRawFd::into_raw_fd(fd), Relaxed);
    let t0 = match (role, exec_t0) {
        (Role::SpawnChild, Some(t)) => t.min(now()),
        _ => now(),
    };
    BOOT_T0.store(t0.to_bits(), Relaxed);
    ORIGIN.store(
        match role {
            Role::Main => ORIGIN_MAIN,
            Role::SpawnChild => ORIGIN_SPAWN,
            Role::ForkServer => ORIGIN_FORKSERVER,
        },
        Relaxed,
    );
    // A forked child came to exist at fork return; a fork server's children are forkserver ones.
    crate::ipc::at_fork_child(after_fork_child);
    ON.store(true, Relaxed);
    match role {
        Role::Main => process_name("MainProcess"),
        Role::ForkServer => process_name("ForkServer"),
        Role::SpawnChild => {}
    }
}

/// Runs in the child right after `fork()`: async-signal-safe work only (atomics, the clock).
extern "C" fn after_fork_child() {
    BOOT_T0.store(now().to_bits(), Relaxed);
    let next = if ORIGIN.load(Relaxed) == ORIGIN_FORKSERVER {
        ORIGIN_FORKSERVER_CHILD
    } else {
        ORIGIN_FORK
    };
    ORIGIN.store(next, Relaxed);
}

// ------------------------------------------------------------------ writing events

fn pid() -> i32 {
    nix::unistd::getpid().as_raw()
}

fn tid() -> i32 {
    nix::unistd::gettid().as_raw()
}

thread_local! {
    /// The pid for which this thread's name was written (a fork changes it).
    static NAMED: std::cell::Cell<i32> = const { std::cell::Cell::new(0) };
}

/// Append one line with a single `write` (O_APPEND: lines from many processes never mix).
fn write_line(line: &str) {
    let fd: RawFd = FD.load(Relaxed);
    if fd < 0 {
        return;
    }
    let b = line.as_bytes();
    // `FD` stays open for the process's life (see `init_from_env`).
    let Ok(fd) = crate::ipc::borrow_fd(fd) else { return };
    while let Err(nix::errno::Errno::EINTR) = nix::unistd::write(fd, b) {}
}

/// A JSON string literal.
pub fn json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The common head of an event: `{"ph":..,"name":..,"cat":..,"pid":..,"tid":..,"ts":..`
/// (no closing brace). Names this thread first if it has not been named in this process.
fn head(ph: &str, name: &str, cat: &str, pid: i32, tid: i32, ts: f64) -> String {
    let mut s = String::with_capacity(160);
    let _ = write!(s, "{{\"ph\":\"{ph}\",\"name\":");
    json_str(&mut s, name);
    s.push_str(",\"cat\":");
    json_str(&mut s, cat);
    let _ = write!(s, ",\"pid\":{pid},\"tid\":{tid},\"ts\":{ts:.3}");
    s
}

fn name_thread() {
    let (p, t) = (pid(), tid());
    if NAMED.with(|n| n.get()) == p {
        return;
    }
    let name = if p == t {
        "MainThread".to_owned()
    } else {
        match std::thread::current().name() {
            Some(n) if n != "main" => n.to_owned(),
            _ => format!("Thread {t}"),
        }
    };
    thread_name(&name);
}

/// `thread_name` metadata for this thread (a later name replaces an earlier one).
pub fn thread_name(name: &str) {
    if !enabled() {
        return;
    }
    let (p, t) = (pid(), tid());
    NAMED.with(|n| n.set(p));
    let mut s = String::from("E\t{\"ph\":\"M\",\"name\":\"thread_name\"");
    let _ = write!(s, ",\"pid\":{p},\"tid\":{t},\"args\":{{\"name\":");
    json_str(&mut s, name);
    s.push_str("}}\n");
    write_line(&s);
}

/// Emit a line `tag<TAB>fields<TAB>event`, where `event` is `head` + `rest` (which closes it).
fn emit(tag: &str, fields: &str, head: String, rest: &str) {
    name_thread();
    write_line(&line(tag, fields, head, rest));
}

fn line(tag: &str, fields: &str, head: String, rest: &str) -> String {
    let mut line = String::with_capacity(tag.len() + fields.len() + head.len() + rest.len() + 4);
    line.push_str(tag);
    line.push('\t');
    if !fields.is_empty() {
        line.push_str(fields);
        line.push('\t');
    }
    line.push_str(&head);
    line.push_str(rest);
    line.push('\n');
    line
}

fn args_part(args: Option<&str>) -> String {
    match args {
        Some(a) => format!(",\"args\":{a}}}"),
        None => "}".to_owned(),
    }
}

/// `process_name` metadata for this process; a child's name gets its start method appended.
pub fn process_name(name: &str) {
    if !enabled() {
        return;
    }
    let full = match start_method() {
        Some(m) => format!("{name} ({m})"),
        None => name.to_owned(),
    };
    let p = pid();
    let mut s = String::from("E\t{\"ph\":\"M\",\"name\":\"process_name\"");
    let _ = write!(s, ",\"pid\":{p},\"tid\":{p},\"args\":{{\"name\":");
    json_str(&mut s, &full);
    s.push_str("}}\n");
    name_thread();
    write_line(&s);
}

/// A complete span (`ph: X`) from `t0` to now on this thread; `args` is a JSON object or None.
pub fn span(name: &str, cat: &str, t0: f64, args: Option<&str>) {
    if !enabled() {
        return;
    }
    span_between(name, cat, t0, now(), args);
}

/// Begin (`B`) or end (`E`) of a span on this thread.
pub fn begin_end(begin: bool, name: &str, cat: &str, args: Option<&str>) {
    if !enabled() {
        return;
    }
    let h = head(if begin { "B" } else { "E" }, name, cat, pid(), tid(), now());
    emit("E", "", h, &args_part(args));
}

/// A thread-scoped instant event.
pub fn instant(name: &str, cat: &str, args: Option<&str>) {
    if !enabled() {
        return;
    }
    let h = head("i", name, cat, pid(), tid(), now());
    emit("E", "", h, &format!(",\"s\":\"t\"{}", args_part(args)));
}

/// The exit of process `of` (None: this one) with `code`, as a process-scoped instant. A
/// parent's report of a child's exit is kept only when the child left none of its own.
pub fn exit(code: i64, of: Option<i32>) {
    if !enabled() {
        return;
    }
    let (p, src) = match of {
        Some(child) => (child, "p"),
        None => (pid(), "c"),
    };
    let by = if of.is_some() { ",\"reported_by\":\"parent\"" } else { "" };
    let h = head("i", "exit", "process", p, p, now());
    emit(
        "X",
        &format!("{p}\t{src}"),
        h,
        &format!(",\"s\":\"p\",\"args\":{{\"exitcode\":{code}{by}}}}}"),
    );
}

/// A stable hash of a message's channel identity and bytes (the same in every process).
pub fn flow_key(channel: u64, data: &[u8]) -> u64 {
    // DefaultHasher::new() has fixed keys: every procpy process computes the same value.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    channel.hash(&mut h);
    data.len().hash(&mut h);
    // A big message is known by its ends and 64 samples between them: hashing megabytes per
    // message would slow a traced run down far more than the events do.
    const EDGE: usize = 4096;
    if data.len() <= 4 * EDGE {
        data.hash(&mut h);
    } else {
        data[..EDGE].hash(&mut h);
        data[data.len() - EDGE..].hash(&mut h);
        let step = (data.len() - 2 * EDGE) / 64;
        for i in 0..64 {
            let at = EDGE + i * step;
            data[at..at + 16].hash(&mut h);
        }
    }
    h.finish()
}

/// A channel identity both ends can see: the inode behind `fd` when it is a pipe (both ends
/// share it) or a file (every process's mapping of a queue's counters). 0 otherwise: each end
/// of a socket has an inode of its own.
pub fn inode(fd: RawFd) -> u64 {
    let shared = |m: libc::mode_t| matches!(m & libc::S_IFMT, libc::S_IFIFO | libc::S_IFREG);
    match crate::ipc::borrow_fd(fd).and_then(|f| Ok(nix::sys::stat::fstat(f)?)) {
        Ok(st) if shared(st.st_mode) => st.st_ino ^ (st.st_dev << 48),
        _ => 0,
    }
}

/// A message sent (`send: true`) or received between `t0` and now: a `send`/`recv` slice on
/// this thread, with the flow's start or end inside it. `cat` names the channel kind
/// (`pipe`, `queue`); `key` is [`flow_key`]'s.
pub fn message(send: bool, cat: &str, key: u64, t0: f64, bytes: usize) {
    if !enabled() {
        return;
    }
    let slice = if send { "send" } else { "recv" };
    span_with_flow(
        slice,
        cat,
        t0,
        now(),
        Some(&format!("{{\"bytes\":{bytes}}}")),
        send,
        "message",
        key,
    );
}

/// A complete span from `t0` to `t1` on this thread with one end of a flow bound to it (the
/// start when `send`) named `flow_name`, written in one `write`.
#[allow(clippy::too_many_arguments)]
pub fn span_with_flow(
    name: &str,
    cat: &str,
    t0: f64,
    t1: f64,
    args: Option<&str>,
    send: bool,
    flow_name: &str,
    key: u64,
) {
    if !enabled() {
        return;
    }
    name_thread();
    let (p, t) = (pid(), tid());
    let dur = (t1 - t0).max(0.0);
    let mut out = line(
        "E",
        "",
        head("X", name, cat, p, t, t0),
        &format!(",\"dur\":{dur:.3}{}", args_part(args)),
    );
    // Strictly inside the slice, so viewers bind the flow to it.
    let mid = t0 + dur / 2.0;
    let (tag, ph, extra) = if send { ("S", "s", "") } else { ("F", "f", ",\"bp\":\"e\"") };
    // The pairing time: a message is in the channel from its send's start, and a receive
    // has it by its end.
    let pair_ts = if send { t0 } else { t1 };
    out.push_str(&line(
        tag,
        &format!("{key:016x}\t{pair_ts:.3}"),
        head(ph, flow_name, cat, p, t, mid),
        &format!("{extra}}}"),
    ));
    write_line(&out);
}

/// A complete span from `t0` to `t1` on this thread.
pub fn span_between(name: &str, cat: &str, t0: f64, t1: f64, args: Option<&str>) {
    if !enabled() {
        return;
    }
    let dur = (t1 - t0).max(0.0);
    let h = head("X", name, cat, pid(), tid(), t0);
    emit("E", "", h, &format!(",\"dur\":{dur:.3}{}", args_part(args)));
}

// ------------------------------------------------------------------ the final file

/// Turn the spool into the Chrome trace-event file `out` and remove the spool. Returns the
/// number of events written.
pub fn finish(spool: &Path, out: &Path) -> io::Result<usize> {
    ON.store(false, Relaxed);
    let bytes = std::fs::read(spool)?;
    // A process still running (a daemon, the fork server) may be mid-write: only whole,
    // newline-terminated lines count.
    let whole = match bytes.iter().rposition(|&b| b == b'\n') {
        Some(end) => &bytes[..end],
        None => &[][..],
    };
    let lines: Vec<String> =
        whole.split(|&b| b == b'\n').map(|l| String::from_utf8_lossy(l).into_owned()).collect();
    let events = convert(&lines);
    let tmp = {
        let mut n = out.file_name().unwrap_or_default().to_os_string();
        n.push(".tmp");
        out.with_file_name(n)
    };
    {
        let mut w = io::BufWriter::new(std::fs::File::create(&tmp)?);
        w.write_all(b"{\"traceEvents\":[\n")?;
        for (i, e) in events.iter().enumerate() {
            if i > 0 {
                w.write_all(b",\n")?;
            }
            w.write_all(e.as_bytes())?;
        }
        w.write_all(b"\n],\"displayTimeUnit\":\"ms\"}\n")?;
        w.flush()?;
    }
    std::fs::rename(&tmp, out)?;
    let _ = std::fs::remove_file(spool);
    Ok(events.len())
}

/// One spool line, split into its tag, fields and event.
fn split(line: &str) -> Option<(&str, Vec<&str>, &str)> {
    let (tag, rest) = line.split_once('\t')?;
    let nfields = match tag {
        "E" => 0,
        "S" | "F" | "X" => 2,
        _ => return None,
    };
    let mut fields = Vec::with_capacity(nfields);
    let mut rest = rest;
    for _ in 0..nfields {
        let (f, r) = rest.split_once('\t')?;
        fields.push(f);
        rest = r;
    }
    // A torn last line (a process killed mid-write) is dropped.
    (rest.starts_with('{') && rest.ends_with('}')).then_some((tag, fields, rest))
}

/// The converter (see the module comment): pair flows, keep one exit per pid, name every
/// process that has events.
fn convert(lines: &[String]) -> Vec<String> {
    let parsed: Vec<(&str, Vec<&str>, &str)> = lines.iter().filter_map(|l| split(l)).collect();
    // Flows: FIFO per key, each receive with the earliest unpaired send that started before it.
    let mut flow_id: HashMap<usize, u64> = HashMap::new();
    {
        let mut order: Vec<(f64, bool, usize, &str)> = Vec::new();
        for (i, (tag, f, _)) in parsed.iter().enumerate() {
            if *tag == "S" || *tag == "F" {
                let ts: f64 = f[1].parse().unwrap_or(0.0);
                // At equal times a send sorts first.
                order.push((ts, *tag == "F", i, f[0]));
            }
        }
        order.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let mut open: HashMap<&str, VecDeque<usize>> = HashMap::new();
        let mut next = 1u64;
        for (_, is_recv, i, key) in order {
            if !is_recv {
                open.entry(key).or_default().push_back(i);
            } else if let Some(s) = open.get_mut(key).and_then(VecDeque::pop_front) {
                flow_id.insert(s, next);
                flow_id.insert(i, next);
                next += 1;
            }
        }
    }
    // Exits: the process's own report wins over its parent's; the last of each kind.
    let mut exit_line: HashMap<&str, (bool, usize)> = HashMap::new();
    for (i, (tag, f, _)) in parsed.iter().enumerate() {
        if *tag == "X" {
            let own = f[1] == "c";
            match exit_line.get(f[0]) {
                Some(&(true, _)) if !own => {}
                _ => {
                    exit_line.insert(f[0], (own, i));
                }
            }
        }
    }
    let kept_exits: HashSet<usize> = exit_line.values().map(|&(_, i)| i).collect();
    // Names: the last one given to a process or thread wins (viewers differ on duplicates).
    let mut last_name: HashMap<(bool, &str, &str), usize> = HashMap::new();
    for (i, (tag, _, ev)) in parsed.iter().enumerate() {
        if *tag == "E" && ev.starts_with("{\"ph\":\"M\"") {
            let thread = ev.contains("\"name\":\"thread_name\"");
            last_name.insert(
                (thread, field(ev, "\"pid\":").unwrap_or(""), field(ev, "\"tid\":").unwrap_or("")),
                i,
            );
        }
    }
    let kept_names: HashSet<usize> = last_name.values().copied().collect();
    let mut named: HashSet<String> = HashSet::new();
    let mut pids: Vec<String> = Vec::new();
    let mut out = Vec::with_capacity(parsed.len());
    for (i, (tag, _, ev)) in parsed.iter().enumerate() {
        match *tag {
            "S" | "F" => match flow_id.get(&i) {
                Some(id) => out.push(format!("{},\"id\":{id}}}", &ev[..ev.len() - 1])),
                None => continue,
            },
            "X" if !kept_exits.contains(&i) => continue,
            "E" if ev.starts_with("{\"ph\":\"M\"") && !kept_names.contains(&i) => continue,
            _ => out.push((*ev).to_owned()),
        }
        if let Some(p) = field(ev, "\"pid\":") {
            if ev.contains("\"name\":\"process_name\"") {
                named.insert(p.to_owned());
            } else if !pids.iter().any(|q| q == p) {
                pids.push(p.to_owned());
            }
        }
    }
    close_open_spans(&mut out);
    // A process that recorded events but never named itself (it died first, or was forked
    // by user code outside multiprocessing) still gets a track name.
    for p in pids.iter().filter(|p| !named.contains(*p)) {
        out.push(format!("{{\"ph\":\"M\",\"name\":\"process_name\",\"pid\":{p},\"tid\":{p},\"args\":{{\"name\":\"process {p}\"}}}}"));
    }
    out
}

/// A span still open when its process exited (a pool worker terminated in its worker loop, a
/// child killed mid-task) is closed at the exit, so viewers do not stretch it to the trace's end.
fn close_open_spans(out: &mut Vec<String>) {
    let num = |ev: &str, key: &str| field(ev, key).and_then(|v| v.parse::<f64>().ok());
    let mut exits: HashMap<i64, f64> = HashMap::new();
    let mut marks: Vec<(f64, bool, i64, i64)> = Vec::new();
    for ev in out.iter() {
        let (Some(p), Some(t), Some(ts)) =
            (num(ev, "\"pid\":"), num(ev, "\"tid\":"), num(ev, "\"ts\":"))
        else {
            continue;
        };
        if ev.starts_with("{\"ph\":\"i\",\"name\":\"exit\"") {
            exits.insert(p as i64, ts);
        } else if ev.starts_with("{\"ph\":\"B\"") || ev.starts_with("{\"ph\":\"E\"") {
            marks.push((ts, ev.starts_with("{\"ph\":\"B\""), p as i64, t as i64));
        }
    }
    // Ends before begins at equal times (a span ending as the next begins).
    marks.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let mut depth: HashMap<(i64, i64), usize> = HashMap::new();
    for (_, begin, p, t) in marks {
        let d = depth.entry((p, t)).or_default();
        if begin {
            *d += 1;
        } else {
            *d = d.saturating_sub(1);
        }
    }
    let mut open: Vec<((i64, i64), usize)> = depth.into_iter().filter(|(_, d)| *d > 0).collect();
    open.sort();
    for ((p, t), d) in open {
        if let Some(ts) = exits.get(&p) {
            for _ in 0..d {
                out.push(format!("{{\"ph\":\"E\",\"pid\":{p},\"tid\":{t},\"ts\":{ts:.3},\"args\":{{\"ended_by\":\"exit\"}}}}"));
            }
        }
    }
}

/// The number after `key` in an event we wrote (`"pid":123`, `"ts":12.5`).
fn field<'a>(ev: &'a str, key: &str) -> Option<&'a str> {
    let at = ev.find(key)? + key.len();
    let rest = &ev[at..];
    let end =
        rest.find(|c: char| !c.is_ascii_digit() && c != '-' && c != '.').unwrap_or(rest.len());
    Some(&rest[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flows_pair_fifo_and_unpaired_halves_drop() {
        let l = |s: &str| s.to_owned();
        let lines = vec![
            l("S\tk\t1.000\t{\"ph\":\"s\",\"pid\":1,\"ts\":1.5}"),
            l("S\tk\t2.000\t{\"ph\":\"s\",\"pid\":1,\"ts\":2.5}"),
            l("F\tk\t3.000\t{\"ph\":\"f\",\"pid\":2,\"ts\":2.9}"),
            l("F\tother\t3.000\t{\"ph\":\"f\",\"pid\":2,\"ts\":2.9}"),
            l("X\t2\tp\t{\"ph\":\"i\",\"name\":\"exit\",\"pid\":2,\"args\":{\"exitcode\":-9}}"),
            l("X\t3\tc\t{\"ph\":\"i\",\"name\":\"exit\",\"pid\":3,\"args\":{\"exitcode\":3}}"),
            l("X\t3\tp\t{\"ph\":\"i\",\"name\":\"exit\",\"pid\":3,\"args\":{\"exitcode\":3}}"),
            l("E\t{\"ph\":\"M\",\"name\":\"process_name\",\"pid\":1,\"args\":{}}"),
            l("E\t{\"ph\":\"B\",\"pid\":1,\"ts\":0.5"),
        ];
        let out = convert(&lines);
        assert_eq!(out.iter().filter(|e| e.contains("\"id\":1}")).count(), 2, "{out:#?}");
        assert!(
            !out.iter().any(|e| e.contains("\"ts\":2.5")),
            "the unpaired send is dropped: {out:#?}"
        );
        assert_eq!(out.iter().filter(|e| e.contains("\"name\":\"exit\"")).count(), 2);
        assert!(!out.iter().any(|e| e.contains("\"pid\":3")
            && e.contains("exit")
            && out.iter().filter(|x| x.contains("\"pid\":3")).count() > 2));
        assert!(out.iter().any(|e| e.contains("\"name\":\"process 2\"")), "{out:#?}");
        assert!(!out.iter().any(|e| e.contains("\"name\":\"process 1\"")));
        assert!(!out.iter().any(|e| e.ends_with("0.5")), "the torn line is dropped");
    }

    #[test]
    fn spans_open_at_exit_are_closed_there() {
        let lines = vec![
            "E\t{\"ph\":\"B\",\"name\":\"worker\",\"cat\":\"process\",\"pid\":7,\"tid\":7,\"ts\":1.000}".to_owned(),
            "E\t{\"ph\":\"B\",\"name\":\"t\",\"cat\":\"task\",\"pid\":7,\"tid\":7,\"ts\":2.000}".to_owned(),
            "E\t{\"ph\":\"E\",\"name\":\"t\",\"cat\":\"task\",\"pid\":7,\"tid\":7,\"ts\":3.000}".to_owned(),
            "E\t{\"ph\":\"B\",\"name\":\"x\",\"cat\":\"task\",\"pid\":8,\"tid\":8,\"ts\":2.000}".to_owned(),
            "X\t7\tp\t{\"ph\":\"i\",\"name\":\"exit\",\"cat\":\"process\",\"pid\":7,\"tid\":7,\"ts\":9.500,\"s\":\"p\",\"args\":{\"exitcode\":-15}}".to_owned(),
        ];
        let out = convert(&lines);
        let closes: Vec<&String> = out.iter().filter(|e| e.contains("ended_by")).collect();
        assert_eq!(closes.len(), 1, "{out:#?}");
        assert!(closes[0].contains("\"pid\":7") && closes[0].contains("\"ts\":9.500"));
    }

    #[test]
    fn the_last_name_of_a_thread_wins() {
        let lines = vec![
            "E\t{\"ph\":\"M\",\"name\":\"thread_name\",\"pid\":1,\"tid\":2,\"args\":{\"name\":\"Thread 2\"}}".to_owned(),
            "E\t{\"ph\":\"M\",\"name\":\"thread_name\",\"pid\":1,\"tid\":2,\"args\":{\"name\":\"pool manager\"}}".to_owned(),
            "E\t{\"ph\":\"M\",\"name\":\"thread_name\",\"pid\":1,\"tid\":1,\"args\":{\"name\":\"MainThread\"}}".to_owned(),
        ];
        let out = convert(&lines);
        assert_eq!(out.iter().filter(|e| e.contains("thread_name")).count(), 2, "{out:#?}");
        assert!(!out.iter().any(|e| e.contains("Thread 2")));
    }

    #[test]
    fn strings_are_escaped() {
        let mut s = String::new();
        json_str(&mut s, "a\"b\\c\nd\u{1}");
        assert_eq!(s, "\"a\\\"b\\\\c\\nd\\u0001\"");
    }
}
