//! `cargo bench --bench embed` (or `cargo bench --profile dev --bench embed`): the embedding
//! API's costs, printed, never asserted.
//!
//! 1. One small call from Rust to a warm worker and back, beside a raw request/response over a
//!    Unix socketpair carrying the same bytes (the same Call and Reply frames, echoed by a
//!    thread that does nothing else): the ratio is the protocol + Python overhead.
//! 2. `Engine::map` of 100,000 small records through an identity function, records/s, beside
//!    CPython's `multiprocessing.Pool.map` on the same data (python3 must be on PATH).
//!
//! This program is its own worker program: `main` starts with `procpy::init()`.

use procpy_interpreter::embed::{read_frame, write_frame, Frame};
use procpy_interpreter::wire;
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

#[derive(Serialize, Deserialize, Clone)]
struct Rec {
    id: u64,
    name: String,
    score: f64,
}

const CALLS: usize = 5_000;
const RECORDS: usize = 100_000;

fn small_call(engine: &procpy::Engine) -> Duration {
    for _ in 0..200 {
        let _: (i64, String) = engine.call("_bench:ident", ((7, "abc"),)).unwrap();
    }
    let t = Instant::now();
    for i in 0..CALLS {
        let r: (i64, String) = engine.call("_bench:ident", ((i as i64, "abc"),)).unwrap();
        debug_assert_eq!(r.0, i as i64);
    }
    t.elapsed() / CALLS as u32
}

fn raw_socketpair() -> Duration {
    // The very frames a small call sends and receives.
    let args = wire::to_bytes(&procpy::to_value(&((7i64, "abc"),)).unwrap());
    let result = wire::to_bytes(&procpy::to_value(&(7i64, "abc")).unwrap());
    let mut request = Vec::new();
    write_frame(&mut request, &Frame::Call { id: 1, target: "_bench:ident".into(), args }).unwrap();
    let mut reply = Vec::new();
    write_frame(&mut reply, &Frame::Reply { id: 1, outcome: Ok(result) }).unwrap();
    let (mut host, mut peer) = UnixStream::pair().unwrap();
    let echo = std::thread::spawn(move || {
        let mut buf = Vec::new();
        loop {
            let mut len = [0u8; 4];
            if peer.read_exact(&mut len).is_err() {
                return;
            }
            buf.resize(u32::from_le_bytes(len) as usize, 0);
            peer.read_exact(&mut buf).unwrap();
            peer.write_all(&reply).unwrap();
        }
    });
    let round = |host: &mut UnixStream| {
        host.write_all(&request).unwrap();
        let _ = read_frame(host).unwrap();
    };
    for _ in 0..200 {
        round(&mut host);
    }
    let t = Instant::now();
    for _ in 0..CALLS {
        round(&mut host);
    }
    let per = t.elapsed() / CALLS as u32;
    drop(host);
    echo.join().unwrap();
    per
}

fn records() -> Vec<Rec> {
    (0..RECORDS as u64)
        .map(|id| Rec { id, name: format!("rec{id}"), score: id as f64 * 0.5 })
        .collect()
}

fn cpython_pool_map(workers: usize) -> Option<f64> {
    let code = format!(
        r#"
import multiprocessing, time
def ident(x):
    return x
if __name__ == '__main__':
    data = [{{'id': i, 'name': 'rec%d' % i, 'score': i * 0.5}} for i in range({RECORDS})]
    with multiprocessing.Pool({workers}) as p:
        p.map(ident, data[:1000])
        t = time.perf_counter()
        out = p.map(ident, data)
        dt = time.perf_counter() - t
    assert out == data
    print(len(data) / dt)
"#
    );
    let dir = std::env::temp_dir().join(format!("procpy-bench-embed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).ok()?;
    let script = dir.join("pool_map.py");
    std::fs::write(&script, code).ok()?;
    let out = std::process::Command::new("python3").arg(&script).output().ok()?;
    let _ = std::fs::remove_dir_all(&dir);
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

fn main() {
    procpy::init();
    let profile = if cfg!(debug_assertions) {
        "debug (dev profile; dependencies at opt-level 3)"
    } else {
        "release"
    };
    println!("embedding benchmark, {profile} build");

    let engine = procpy::Builder::new()
        .workers(1)
        .source("_bench", "def ident(x):\n    return x\n")
        .build()
        .unwrap();
    let call = small_call(&engine);
    let raw = raw_socketpair();
    println!(
        "small call round trip: {:.1} us; raw socketpair request/response, same bytes: {:.1} us; ratio {:.2}x",
        call.as_secs_f64() * 1e6,
        raw.as_secs_f64() * 1e6,
        call.as_secs_f64() / raw.as_secs_f64()
    );
    drop(engine);

    let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let engine = procpy::Builder::new()
        .workers(workers)
        .source("_bench", "def ident(x):\n    return x\n")
        .build()
        .unwrap();
    let data = records();
    let _: Vec<Rec> = engine.map("_bench:ident", &data[..1000]).unwrap();
    let t = Instant::now();
    let out: Vec<Rec> = engine.map("_bench:ident", &data).unwrap();
    let dt = t.elapsed().as_secs_f64();
    assert_eq!(out.len(), data.len());
    assert!(out.iter().zip(&data).all(|(a, b)| a.id == b.id && a.name == b.name));
    let ours = RECORDS as f64 / dt;
    match cpython_pool_map(workers) {
        Some(cp) => println!("map of {RECORDS} records through identity on {workers} workers: procpy {ours:.0} records/s; CPython Pool.map {cp:.0} records/s ({:.2}x)", ours / cp),
        None => println!("map of {RECORDS} records through identity on {workers} workers: procpy {ours:.0} records/s; CPython Pool.map: python3 not available"),
    }
}
