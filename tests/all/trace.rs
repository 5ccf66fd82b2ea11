//! `procpy --trace FILE`: the Chrome trace-event file of a run, under fork, spawn and forkserver.
//! The file must parse as JSON; every process has a named track; a child's boot and run spans
//! follow its start in the parent, in order; exits carry the right codes; every flow start has
//! its end; pool tasks appear on worker processes. No timing thresholds: only order in time.

use crate::common::serial;
use crate::common::{self, procpy, run_with_deadline, Outcome, METHODS};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

// ---------------------------------------------------------------- a tiny JSON reader

#[derive(Debug, Clone, PartialEq)]
enum Json {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

impl Json {
    fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Obj(kv) => kv.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
    fn str(&self, key: &str) -> Option<&str> {
        match self.get(key) {
            Some(Json::Str(s)) => Some(s),
            _ => None,
        }
    }
    fn num(&self, key: &str) -> Option<f64> {
        match self.get(key) {
            Some(Json::Num(n)) => Some(*n),
            _ => None,
        }
    }
    fn arg(&self, key: &str) -> Option<&Json> {
        self.get("args").and_then(|a| a.get(key))
    }
}

struct Reader<'a> {
    b: &'a [u8],
    i: usize,
}

impl Reader<'_> {
    fn ws(&mut self) {
        while self.i < self.b.len() && self.b[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }
    fn eat(&mut self, c: u8) -> Result<(), String> {
        self.ws();
        if self.b.get(self.i) == Some(&c) {
            self.i += 1;
            Ok(())
        } else {
            Err(format!("expected '{}' at byte {}", c as char, self.i))
        }
    }
    fn value(&mut self) -> Result<Json, String> {
        self.ws();
        match self.b.get(self.i).copied() {
            Some(b'{') => {
                self.i += 1;
                let mut kv = Vec::new();
                self.ws();
                if self.b.get(self.i) == Some(&b'}') {
                    self.i += 1;
                    return Ok(Json::Obj(kv));
                }
                loop {
                    self.ws();
                    let Json::Str(k) = self.value()? else {
                        return Err(format!("key expected at {}", self.i));
                    };
                    self.eat(b':')?;
                    kv.push((k, self.value()?));
                    self.ws();
                    match self.b.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b'}') => {
                            self.i += 1;
                            return Ok(Json::Obj(kv));
                        }
                        _ => return Err(format!("',' or '}}' expected at {}", self.i)),
                    }
                }
            }
            Some(b'[') => {
                self.i += 1;
                let mut v = Vec::new();
                self.ws();
                if self.b.get(self.i) == Some(&b']') {
                    self.i += 1;
                    return Ok(Json::Arr(v));
                }
                loop {
                    v.push(self.value()?);
                    self.ws();
                    match self.b.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b']') => {
                            self.i += 1;
                            return Ok(Json::Arr(v));
                        }
                        _ => return Err(format!("',' or ']' expected at {}", self.i)),
                    }
                }
            }
            Some(b'"') => {
                self.i += 1;
                let mut s = String::new();
                loop {
                    let c = *self.b.get(self.i).ok_or("unterminated string")?;
                    self.i += 1;
                    match c {
                        b'"' => return Ok(Json::Str(s)),
                        b'\\' => {
                            let e = *self.b.get(self.i).ok_or("bad escape")?;
                            self.i += 1;
                            match e {
                                b'"' => s.push('"'),
                                b'\\' => s.push('\\'),
                                b'/' => s.push('/'),
                                b'n' => s.push('\n'),
                                b'r' => s.push('\r'),
                                b't' => s.push('\t'),
                                b'b' => s.push('\u{8}'),
                                b'f' => s.push('\u{c}'),
                                b'u' => {
                                    let h = std::str::from_utf8(
                                        self.b.get(self.i..self.i + 4).ok_or("bad \\u")?,
                                    )
                                    .map_err(|e| e.to_string())?;
                                    s.push(
                                        char::from_u32(
                                            u32::from_str_radix(h, 16)
                                                .map_err(|e| e.to_string())?,
                                        )
                                        .unwrap_or('?'),
                                    );
                                    self.i += 4;
                                }
                                _ => return Err(format!("bad escape at {}", self.i)),
                            }
                        }
                        c if c < 0x20 => {
                            return Err(format!("control character in string at {}", self.i))
                        }
                        _ => {
                            // Copy a whole UTF-8 sequence.
                            let start = self.i - 1;
                            while self.i < self.b.len() && (self.b[self.i] & 0xc0) == 0x80 {
                                self.i += 1;
                            }
                            s.push_str(
                                std::str::from_utf8(&self.b[start..self.i])
                                    .map_err(|e| e.to_string())?,
                            );
                        }
                    }
                }
            }
            Some(b't') if self.b[self.i..].starts_with(b"true") => {
                self.i += 4;
                Ok(Json::Bool(true))
            }
            Some(b'f') if self.b[self.i..].starts_with(b"false") => {
                self.i += 5;
                Ok(Json::Bool(false))
            }
            Some(b'n') if self.b[self.i..].starts_with(b"null") => {
                self.i += 4;
                Ok(Json::Null)
            }
            Some(c) if c == b'-' || c.is_ascii_digit() => {
                let start = self.i;
                while self.i < self.b.len()
                    && matches!(self.b[self.i], b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
                {
                    self.i += 1;
                }
                let t = std::str::from_utf8(&self.b[start..self.i]).unwrap();
                t.parse().map(Json::Num).map_err(|_| format!("bad number {t:?}"))
            }
            _ => Err(format!("value expected at byte {}", self.i)),
        }
    }
}

fn parse_json(text: &str) -> Result<Json, String> {
    let mut r = Reader { b: text.as_bytes(), i: 0 };
    let v = r.value()?;
    r.ws();
    if r.i != r.b.len() {
        return Err(format!("trailing data at byte {}", r.i));
    }
    Ok(v)
}

#[test]
fn the_json_reader_reads_and_refuses() {
    let _serial = serial::shared();
    let v = parse_json(r#"{"a":[1,-2.5e1,"x\"\u00e9"],"b":{"c":null,"d":true}}"#).unwrap();
    assert_eq!(
        v.get("a"),
        Some(&Json::Arr(vec![Json::Num(1.0), Json::Num(-25.0), Json::Str("x\"é".into())]))
    );
    assert_eq!(v.get("b").and_then(|b| b.get("d")), Some(&Json::Bool(true)));
    assert!(parse_json(r#"{"a":1,}"#).is_err());
    assert!(parse_json(r#"{"a":1} x"#).is_err());
}

// ---------------------------------------------------------------- running

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("procpy-tracetest-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Run `code` as a script with `--trace`; returns the outcome and the parsed trace's events.
fn traced(name: &str, method: &str, code: &str) -> (Outcome, Vec<Json>) {
    let dir = temp_dir(&format!("{name}-{method}"));
    let script = dir.join(format!("{name}.py"));
    std::fs::write(&script, code).unwrap();
    let out = dir.join("trace.json");
    let _ = std::fs::remove_file(&out);
    let mut cmd = Command::new(procpy());
    cmd.arg("--trace").arg(&out).arg(&script).arg(method).current_dir(&dir);
    // A guard against hangs only.
    let o = run_with_deadline(cmd, Duration::from_secs(120));
    assert!(!o.timed_out, "{name} under {method} hung");
    let text = std::fs::read_to_string(&out)
        .unwrap_or_else(|e| panic!("no trace file for {name} under {method}: {e}\n{o:?}"));
    let doc = parse_json(&text)
        .unwrap_or_else(|e| panic!("trace of {name} under {method} is not JSON: {e}"));
    assert_eq!(doc.str("displayTimeUnit"), Some("ms"));
    let Some(Json::Arr(events)) = doc.get("traceEvents") else { panic!("no traceEvents array") };
    // The spool is gone.
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().contains("spool"))
        .collect();
    assert!(left.is_empty(), "spool left behind: {left:?}");
    let _ = std::fs::remove_dir_all(&dir);
    (o, events.clone())
}

/// pid -> process_name; panics unless every pid with events has one.
fn process_names(events: &[Json]) -> HashMap<i64, String> {
    let mut names = HashMap::new();
    for e in events {
        if e.str("ph") == Some("M") && e.str("name") == Some("process_name") {
            names.insert(
                e.num("pid").unwrap() as i64,
                e.arg("name")
                    .and_then(|n| if let Json::Str(s) = n { Some(s.clone()) } else { None })
                    .unwrap(),
            );
        }
    }
    for e in events {
        let pid = e.num("pid").expect("every event has a pid") as i64;
        assert!(names.contains_key(&pid), "pid {pid} has no process_name: {e:?}");
    }
    names
}

fn pid_named(names: &HashMap<i64, String>, name: &str) -> i64 {
    let found: Vec<i64> =
        names.iter().filter(|(_, n)| n.as_str() == name).map(|(p, _)| *p).collect();
    assert_eq!(found.len(), 1, "one process named {name:?} expected: {names:?}");
    found[0]
}

fn find<'a>(events: &'a [Json], pid: i64, ph: &str, name: &str) -> Vec<&'a Json> {
    events
        .iter()
        .filter(|e| {
            e.num("pid") == Some(pid as f64)
                && e.str("ph") == Some(ph)
                && e.str("name") == Some(name)
        })
        .collect()
}

fn one<'a>(events: &'a [Json], pid: i64, ph: &str, name: &str) -> &'a Json {
    let v = find(events, pid, ph, name);
    assert_eq!(v.len(), 1, "one {ph} {name:?} on pid {pid} expected, got {v:?}");
    v[0]
}

fn exitcode(events: &[Json], pid: i64) -> i64 {
    let e = one(events, pid, "i", "exit");
    match e.arg("exitcode") {
        Some(Json::Num(n)) => *n as i64,
        other => panic!("exit without exitcode: {other:?}"),
    }
}

/// Every flow start has exactly one end with its id, and the other way round; the end is not
/// earlier than the start. Returns (start, end) pairs.
fn flows(events: &[Json]) -> Vec<(&Json, &Json)> {
    let mut by_id: HashMap<i64, (Vec<&Json>, Vec<&Json>)> = HashMap::new();
    for e in events {
        match e.str("ph") {
            Some("s") => by_id.entry(e.num("id").expect("flow id") as i64).or_default().0.push(e),
            Some("f") => by_id.entry(e.num("id").expect("flow id") as i64).or_default().1.push(e),
            _ => {}
        }
    }
    let mut pairs = Vec::new();
    for (id, (s, f)) in by_id {
        assert!(s.len() == 1 && f.len() == 1, "flow {id}: {} starts, {} ends", s.len(), f.len());
        assert_eq!(s[0].str("cat"), f[0].str("cat"));
        // Each end sits inside a send/recv slice (or the start/boot spans) of its own thread.
        for end in [s[0], f[0]] {
            let ts = end.num("ts").unwrap();
            let inside = events.iter().any(|x| {
                x.str("ph") == Some("X")
                    && x.num("pid") == end.num("pid")
                    && x.num("tid") == end.num("tid")
                    && x.num("ts").unwrap() <= ts
                    && ts <= x.num("ts").unwrap() + x.num("dur").unwrap()
            });
            assert!(inside, "flow end outside any slice: {end:?}");
        }
        pairs.push((s[0], f[0]));
    }
    pairs
}

const SCRIPT: &str = r#"
import multiprocessing as mp, sys

def child(q, conn):
    q.put('hello from child')
    conn.send(conn.recv() * 2)
    sys.exit(3)

def square(x):
    return x * x

if __name__ == '__main__':
    mp.set_start_method(sys.argv[1])
    q = mp.Queue()
    a, b = mp.Pipe()
    p = mp.Process(target=child, args=(q, b))
    p.start()
    a.send(21)
    print(q.get(), a.recv())
    p.join()
    print(p.exitcode)
    with mp.Pool(2) as pool:
        print(pool.map(square, range(7), chunksize=2))
"#;

#[test]
fn a_run_becomes_a_timeline_under_every_start_method() {
    let _serial = serial::shared();
    for method in METHODS {
        let (o, ev) = traced("timeline", method, SCRIPT);
        assert_eq!(o.status, Some(0), "{method}: {o:?}");
        assert_eq!(o.stdout, "hello from child 42\n3\n[0, 1, 4, 9, 16, 25, 36]\n", "{method}");
        let names = process_names(&ev);
        let main = pid_named(&names, "MainProcess");
        let child = pid_named(&names, &format!("Process-1 ({method})"));
        if method == "forkserver" {
            // The server's track shows each fork it made.
            let server = pid_named(&names, "ForkServer");
            let forks = find(&ev, server, "i", "fork");
            assert!(
                forks.iter().any(|e| e.arg("pid") == Some(&Json::Num(child as f64))),
                "{forks:?}"
            );
        }
        let prefix = match method {
            "fork" => "ForkPoolWorker-",
            "spawn" => "SpawnPoolWorker-",
            _ => "ForkServerPoolWorker-",
        };
        let workers: Vec<i64> = names
            .iter()
            .filter(|(_, n)| n.starts_with(prefix) && n.ends_with(&format!(" ({method})")))
            .map(|(p, _)| *p)
            .collect();
        assert_eq!(workers.len(), 2, "{method}: {names:?}");

        // Start in the parent, then the child's boot, its run, its exit, in that order.
        let start = one(&ev, main, "X", "start Process-1");
        assert_eq!(start.arg("pid"), Some(&Json::Num(child as f64)));
        assert_eq!(start.arg("method"), Some(&Json::Str(method.into())));
        let boot = one(&ev, child, "X", "boot");
        let run_b = one(&ev, child, "B", "child");
        let run_e = one(&ev, child, "E", "child");
        let exit = one(&ev, child, "i", "exit");
        let t = |e: &Json| e.num("ts").unwrap();
        assert!(t(start) <= t(boot), "{method}: boot before start");
        assert!(t(boot) + boot.num("dur").unwrap() <= t(run_b), "{method}: run before boot ended");
        assert!(t(run_b) <= t(run_e) && t(run_e) <= t(exit), "{method}: run/exit out of order");
        assert_eq!(exitcode(&ev, child), 3, "{method}");
        assert_eq!(exitcode(&ev, main), 0, "{method}");
        for w in &workers {
            one(&ev, *w, "X", "boot");
            // Terminated in their worker loop: the run span is closed at their exit.
            assert_eq!(find(&ev, *w, "B", "worker").len(), 1);
            exitcode(&ev, *w);
        }

        // Threads are named; the pool's manager thread too.
        let thread_names: Vec<(i64, String)> = ev
            .iter()
            .filter(|e| e.str("ph") == Some("M") && e.str("name") == Some("thread_name"))
            .map(|e| {
                (
                    e.num("pid").unwrap() as i64,
                    match e.arg("name") {
                        Some(Json::Str(s)) => s.clone(),
                        _ => String::new(),
                    },
                )
            })
            .collect();
        assert!(
            thread_names.contains(&(main, "MainThread".into()))
                && thread_names.contains(&(main, "pool manager".into())),
            "{method}: {thread_names:?}"
        );

        // Flows: complete, and the messages of the script among them.
        let pairs = flows(&ev);
        let pid = |e: &Json| e.num("pid").unwrap() as i64;
        let has = |cat: &str, from: i64, to: i64| {
            pairs.iter().any(|(s, f)| s.str("cat") == Some(cat) && pid(s) == from && pid(f) == to)
        };
        assert!(has("queue", child, main), "{method}: no queue flow child -> main");
        assert!(
            has("pipe", main, child) && has("pipe", child, main),
            "{method}: pipe flows missing"
        );
        assert!(has("process", main, child), "{method}: no start -> boot flow");
        for w in &workers {
            assert!(
                has("pipe", main, *w) || has("pipe", *w, main),
                "{method}: no task flow with worker {w}"
            );
        }

        // Pool tasks: spans named after the function, on the workers, covering every item.
        let tasks: Vec<&Json> = ev
            .iter()
            .filter(|e| e.str("ph") == Some("B") && e.str("cat") == Some("task"))
            .collect();
        assert!(
            tasks.iter().all(|e| e.str("name") == Some("square") && workers.contains(&pid(e))),
            "{method}: {tasks:?}"
        );
        let mut index: Vec<i64> = tasks
            .iter()
            .map(|e| match e.arg("index") {
                Some(Json::Num(n)) => *n as i64,
                _ => -1,
            })
            .collect();
        index.sort();
        assert_eq!(index, vec![0, 1, 2, 3], "{method}: chunk indexes");
        let items: f64 = tasks
            .iter()
            .map(|e| {
                e.arg("items")
                    .and_then(|i| if let Json::Num(n) = i { Some(*n) } else { None })
                    .unwrap()
            })
            .sum();
        assert_eq!(items, 7.0, "{method}");
        assert_eq!(
            ev.iter().filter(|e| e.str("ph") == Some("E") && e.str("cat") == Some("task")).count(),
            4
        );
    }
}

const KILLED: &str = r#"
import multiprocessing as mp, os, signal, sys

def victim(q):
    q.put(os.getpid())
    signal.pause() if hasattr(signal, 'pause') else None

if __name__ == '__main__':
    mp.set_start_method(sys.argv[1])
    q = mp.Queue()
    p = mp.Process(target=victim, args=(q,))
    p.start()
    q.get(timeout=60)
    p.kill()
    p.join()
    print(p.exitcode)
"#;

#[test]
fn a_killed_child_gets_its_exit_from_the_parent() {
    let _serial = serial::shared();
    for method in METHODS {
        let (o, ev) = traced("killed", method, KILLED);
        assert_eq!(o.stdout, "-9\n", "{method}: {o:?}");
        let names = process_names(&ev);
        let child = pid_named(&names, &format!("Process-1 ({method})"));
        let exit = one(&ev, child, "i", "exit");
        assert_eq!(exit.arg("exitcode"), Some(&Json::Num(-9.0)), "{method}");
        assert_eq!(exit.arg("reported_by"), Some(&Json::Str("parent".into())));
        // Its run span, open when it died, ends at that exit.
        one(&ev, child, "B", "victim");
        let end = ev
            .iter()
            .find(|e| e.str("ph") == Some("E") && e.num("pid") == Some(child as f64))
            .expect("closed run span");
        assert_eq!(end.arg("ended_by"), Some(&Json::Str("exit".into())));
        assert_eq!(end.num("ts"), exit.num("ts"));
        flows(&ev);
    }
}

const FUTURES: &str = r#"
import concurrent.futures as cf, multiprocessing as mp, sys

def cube(x):
    return x ** 3

if __name__ == '__main__':
    with cf.ProcessPoolExecutor(1, mp_context=mp.get_context(sys.argv[1])) as ex:
        print(ex.submit(cube, 2).result(), list(ex.map(cube, range(5), chunksize=2)))
"#;

#[test]
fn process_pool_executor_tasks_are_named_after_the_function() {
    let _serial = serial::shared();
    let (o, ev) = traced("futures", "fork", FUTURES);
    assert_eq!(o.stdout, "8 [0, 1, 8, 27, 64]\n", "{o:?}");
    process_names(&ev);
    let tasks: Vec<&Json> =
        ev.iter().filter(|e| e.str("ph") == Some("B") && e.str("cat") == Some("task")).collect();
    assert!(tasks.iter().all(|e| e.str("name") == Some("cube")), "{tasks:?}");
    let mut items: Vec<i64> = tasks
        .iter()
        .map(|e| match e.arg("items") {
            Some(Json::Num(n)) => *n as i64,
            _ => -1,
        })
        .collect();
    items.sort();
    // submit: one call; map over 5 items in chunks of 2: 2, 2, 1.
    assert_eq!(items, vec![1, 1, 2, 2]);
    flows(&ev);
}

#[test]
fn a_relative_trace_path_is_the_starting_directory_s_even_if_the_script_moves() {
    let _serial = serial::shared();
    let dir = temp_dir("relative");
    std::fs::create_dir_all(dir.join("elsewhere")).unwrap();
    std::fs::write(dir.join("s.py"), "import os\nos.chdir('elsewhere')\nprint('moved')\n").unwrap();
    let mut cmd = Command::new(procpy());
    cmd.args(["--trace", "t.json", "s.py"]).current_dir(&dir);
    let o = run_with_deadline(cmd, Duration::from_secs(60));
    assert_eq!(o.stdout, "moved\n", "{o:?}");
    let text =
        std::fs::read_to_string(dir.join("t.json")).expect("trace in the starting directory");
    let doc = parse_json(&text).unwrap();
    let Some(Json::Arr(ev)) = doc.get("traceEvents") else { panic!() };
    pid_named(&process_names(ev), "MainProcess");
    assert!(!dir.join("elsewhere/t.json").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_unwritable_trace_file_is_refused_before_the_script_runs() {
    let _serial = serial::shared();
    let dir = temp_dir("unwritable");
    let script = dir.join("s.py");
    std::fs::write(&script, "print('ran')\n").unwrap();
    let mut cmd = Command::new(procpy());
    cmd.arg("--trace").arg(dir.join("no/such/dir/t.json")).arg(&script);
    let o = run_with_deadline(cmd, Duration::from_secs(60));
    assert_eq!(o.status, Some(2), "{o:?}");
    assert_eq!(o.stdout, "");
    assert!(
        o.stderr.contains("cannot write the trace file")
            && o.stderr.contains("No such file or directory"),
        "{}",
        o.stderr
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn without_trace_nothing_is_recorded_and_no_variable_leaks() {
    let _serial = serial::shared();
    let dir = temp_dir("off");
    let script = dir.join("s.py");
    std::fs::write(&script, "import os, _procpy, _procpy_trace\nprint(os.environ.get('PROCPY_TRACE'), _procpy.trace_enabled(), _procpy_trace.enabled())\n").unwrap();
    let mut cmd = Command::new(procpy());
    cmd.arg(&script).env_remove("PROCPY_TRACE");
    let o = run_with_deadline(cmd, Duration::from_secs(60));
    assert_eq!(o.stdout, "None False False\n", "{o:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Conformance scripts print under `--trace` exactly what they print under CPython, and their
/// traces are complete: tracing changes what a run records, never what it does.
#[test]
fn traced_scripts_behave_as_under_cpython() {
    let _serial = serial::shared();
    let scripts = [
        "pool_basics",
        "queue_many_producers_consumers",
        "pipe_basics",
        "process_exitcode_signals",
        "futures_process_pool",
    ];
    let out_dir = temp_dir("conformance");
    let mut failures = Vec::new();
    for name in scripts {
        let script = common::root().join("tests/scripts").join(format!("{name}.py"));
        for method in METHODS {
            let want = common::run_script(
                Path::new("python3"),
                &script,
                &[method],
                Duration::from_secs(90),
            );
            let out = out_dir.join(format!("{name}-{method}.json"));
            let mut cmd = Command::new(procpy());
            cmd.arg("--trace")
                .arg(&out)
                .arg(&script)
                .arg(method)
                .current_dir(script.parent().unwrap());
            let got = run_with_deadline(cmd, Duration::from_secs(90));
            if got.timed_out || got.stdout != want.stdout || got.status != want.status {
                failures.push(format!(
                    "{name} under {method}: status {:?} (CPython {:?})\n{}\n--- CPython:\n{}",
                    got.status, want.status, got.stdout, want.stdout
                ));
                continue;
            }
            let text = std::fs::read_to_string(&out).unwrap();
            let doc = parse_json(&text).unwrap_or_else(|e| panic!("{name} under {method}: {e}"));
            let Some(Json::Arr(ev)) = doc.get("traceEvents") else { panic!("no traceEvents") };
            let names = process_names(ev);
            pid_named(&names, "MainProcess");
            flows(ev);
        }
    }
    let _ = std::fs::remove_dir_all(&out_dir);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

const THREADS_AND_TCP: &str = r#"
import multiprocessing as mp, sys
from multiprocessing.pool import ThreadPool
from multiprocessing.connection import Listener, Client

def inc(x):
    return x + 1

def client(addr):
    with Client(addr, authkey=b'k') as c:
        c.send(c.recv() + 1)

if __name__ == '__main__':
    mp.set_start_method(sys.argv[1])
    with ThreadPool(2) as tp:
        print(tp.map(inc, range(4), chunksize=1))
    with Listener(('127.0.0.1', 0), authkey=b'k') as l:
        p = mp.Process(target=client, args=(l.address,))
        p.start()
        with l.accept() as c:
            c.send(41)
            print(c.recv())
        p.join()
"#;

/// ThreadPool tasks are spans on the worker threads (named as threading names them); messages
/// over TCP (whose two ends share no identity) still pair into flows.
#[test]
fn thread_pool_tasks_and_tcp_messages_are_traced() {
    let _serial = serial::shared();
    let (o, ev) = traced("threads_tcp", "fork", THREADS_AND_TCP);
    assert_eq!(o.stdout, "[1, 2, 3, 4]\n42\n", "{o:?}");
    let names = process_names(&ev);
    let main = pid_named(&names, "MainProcess");
    let child = pid_named(&names, "Process-1 (fork)");
    let worker_tids: Vec<f64> = ev
        .iter()
        .filter(|e| {
            e.str("name") == Some("thread_name")
                && matches!(e.arg("name"), Some(Json::Str(s)) if s.ends_with("(worker)"))
        })
        .map(|e| e.num("tid").unwrap())
        .collect();
    assert_eq!(worker_tids.len(), 2, "{ev:?}");
    let tasks: Vec<&Json> =
        ev.iter().filter(|e| e.str("ph") == Some("B") && e.str("cat") == Some("task")).collect();
    assert_eq!(tasks.len(), 4);
    assert!(tasks.iter().all(|e| e.str("name") == Some("inc")
        && e.num("pid") == Some(main as f64)
        && worker_tids.contains(&e.num("tid").unwrap())));
    let pairs = flows(&ev);
    let pid = |e: &Json| e.num("pid").unwrap() as i64;
    // The authentication challenge and the two messages, both ways.
    assert!(
        pairs
            .iter()
            .filter(|(s, f)| s.str("cat") == Some("pipe") && pid(s) == main && pid(f) == child)
            .count()
            >= 2
    );
    assert!(
        pairs
            .iter()
            .filter(|(s, f)| s.str("cat") == Some("pipe") && pid(s) == child && pid(f) == main)
            .count()
            >= 2
    );
}
