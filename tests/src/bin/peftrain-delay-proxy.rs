//! `peftrain-delay-proxy`: a TCP proxy on loopback that delays every byte by a fixed one-way
//! latency in each direction, standing in for a network link where the kernel has no `netem`
//! (bench/allreduce.sh puts one in front of every worker, so every peer-to-peer link has it).
//!
//!     peftrain-delay-proxy --delay-ms 0.5 LISTEN=TARGET [LISTEN=TARGET ...]
//!
//! Prints one line per mapping, `LISTEN_BOUND=TARGET`, once all are listening. Bandwidth is
//! not limited: each direction reads as fast as it can, stamps what it read, and a writer
//! thread releases it when its time comes (OS threads and `thread::sleep`: tokio's timer
//! rounds up to whole milliseconds, which would turn 0.5 ms into 1).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn pump(mut from: TcpStream, mut to: TcpStream, delay: Duration) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let writer = std::thread::spawn(move || {
        for (due, data) in rx {
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if to.write_all(&data).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tx.send((Instant::now() + delay, buf[..n].to_vec())).is_err() {
                    break;
                }
            }
        }
    }
    drop(tx);
    let _ = writer.join();
}

fn serve(listener: TcpListener, target: String, delay: Duration) {
    for conn in listener.incoming() {
        let Ok(client) = conn else { continue };
        let target = target.clone();
        std::thread::spawn(move || {
            let Ok(server) = TcpStream::connect(&target) else { return };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else { return };
            let up = std::thread::spawn(move || pump(client, server, delay));
            pump(s2, c2, delay);
            let _ = up.join();
        });
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut delay = Duration::ZERO;
    let mut maps = Vec::new();
    while let Some(a) = args.next() {
        if a == "--delay-ms" {
            let v = args.next().and_then(|v| v.parse::<f64>().ok()).filter(|v| v.is_finite() && (0.0..=10_000.0).contains(v));
            match v {
                Some(ms) => delay = Duration::from_secs_f64(ms / 1000.0),
                None => {
                    eprintln!("peftrain-delay-proxy: error: --delay-ms takes milliseconds from 0 to 10000");
                    std::process::exit(2);
                }
            }
        } else if let Some((l, t)) = a.split_once('=') {
            maps.push((l.to_string(), t.to_string()));
        } else {
            eprintln!("peftrain-delay-proxy: error: {a:?}: expected LISTEN=TARGET or --delay-ms MS");
            std::process::exit(2);
        }
    }
    let mut threads = Vec::new();
    let mut out = std::io::stdout().lock();
    for (l, t) in maps {
        let listener = match TcpListener::bind(&l) {
            Ok(x) => x,
            Err(e) => {
                eprintln!("peftrain-delay-proxy: error: {l}: {e}");
                std::process::exit(1);
            }
        };
        let bound = listener.local_addr().map(|a| a.to_string()).unwrap_or(l);
        let _ = writeln!(out, "{bound}={t}");
        threads.push(std::thread::spawn(move || serve(listener, t, delay)));
    }
    let _ = out.flush();
    drop(out);
    for t in threads {
        let _ = t.join();
    }
}
