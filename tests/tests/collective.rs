//! The all-reduce alone, over real sockets between real worker processes in their
//! collective-only mode (`peftrain-worker allreduce-bench`, the training code path): for the
//! ring and for halving-doubling, on power-of-two and other worker counts, buffers of one value,
//! of odd lengths, and of more than one chunk, every worker ends with the same bits, and those
//! bits are numpy's sum of the same inputs (its sha256). Also through `peftrain-delay-proxy`,
//! which the bench puts between peers, with the proxy's latency seen in the time taken.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::Duration;

use peftrain_tests::{bin, python};

const TOKEN: &str = "collective-test-token-0123456789";

struct BenchWorker {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
}

impl Drop for BenchWorker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl BenchWorker {
    fn start() -> (BenchWorker, String) {
        let mut child = Command::new(bin("peftrain-worker"))
            .args(["allreduce-bench", "--listen", "127.0.0.1:0", "--worker-timeout", "30"])
            .env("PEFTRAIN_TOKEN", TOKEN)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for l in out.lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        let mut w = BenchWorker { child, stdin, lines };
        let addr = w.answer()["listening"].as_str().unwrap().to_string();
        (w, addr)
    }

    fn answer(&mut self) -> serde_json::Value {
        let line = self.lines.recv_timeout(Duration::from_secs(120)).expect("an answer within 120 s");
        serde_json::from_str(&line).unwrap()
    }

    fn order(&mut self, o: serde_json::Value) {
        writeln!(self.stdin, "{o}").unwrap();
        self.stdin.flush().unwrap();
    }
}

/// Every worker's answers to one measurement (a setup order to all, then a run order to all).
fn all_reduce(ws: &mut [BenchWorker], peers: &[String], alg: &str, elems: u64, generation: u64, iters: u32) -> Vec<serde_json::Value> {
    for setup_only in [true, false] {
        for (rank, w) in ws.iter_mut().enumerate() {
            w.order(serde_json::json!({"rank": rank, "peers": peers, "generation": generation, "algorithm": alg, "elems": elems,
                                       "iters": iters, "setup_only": setup_only}));
        }
        if setup_only {
            for w in ws.iter_mut() {
                let a = w.answer();
                assert_eq!(a["ok"], true, "setup: {a}");
            }
        }
    }
    ws.iter_mut().map(|w| w.answer()).collect()
}

/// numpy's sum over `world` ranks of the bench's inputs ((i mod 1024) / 1024 + r / 32, fp32),
/// as the sha256 of its fp32 little-endian bytes.
fn numpy_digest(world: usize, elems: u64) -> String {
    let code = "import hashlib, sys, numpy as np\n\
                n, w = int(sys.argv[1]), int(sys.argv[2])\n\
                i = np.arange(n)\n\
                x = np.stack([((i % 1024) / 1024.0 + r / 32.0).astype(np.float32) for r in range(w)])\n\
                s = x.astype(np.float64).sum(axis=0).astype('<f4')\n\
                print(hashlib.sha256(s.tobytes()).hexdigest())";
    let out = Command::new(python()).args(["-c", code, &elems.to_string(), &world.to_string()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn every_worker_ends_with_numpy_s_sum_bit_for_bit_on_each_algorithm() {
    let _serial = peftrain_tests::one_at_a_time();
    let mut generation = 1;
    for world in [4usize, 5, 7] {
        let (mut ws, addrs): (Vec<_>, Vec<_>) = (0..world).map(|_| BenchWorker::start()).unzip();
        // One value, an odd length, more than one 256 Ki-value chunk per transfer.
        for elems in [1u64, 1001, 600_001] {
            let want = numpy_digest(world, elems);
            for alg in ["ring", "halving-doubling"] {
                generation += 1;
                let answers = all_reduce(&mut ws, &addrs, alg, elems, generation, 3);
                for (rank, a) in answers.iter().enumerate() {
                    assert_eq!(a["ok"], true, "{alg}, {world} workers, {elems} values, rank {rank}: {a}");
                    assert_eq!(a["digest"], want.as_str(), "{alg}, {world} workers, {elems} values: rank {rank} differs from numpy's sum");
                    assert_eq!(a["exact"], true);
                }
            }
        }
    }
}

#[test]
fn the_delay_proxy_adds_its_latency_to_every_round() {
    let _serial = peftrain_tests::one_at_a_time();
    let (mut ws, addrs): (Vec<_>, Vec<_>) = (0..4).map(|_| BenchWorker::start()).unzip();
    let mut proxy = Command::new(bin("peftrain-delay-proxy"))
        .arg("--delay-ms")
        .arg("5")
        .args(addrs.iter().map(|a| format!("127.0.0.1:0={a}")))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(proxy.stdout.take().unwrap());
    let mut fronts = std::collections::HashMap::new();
    for _ in &addrs {
        let mut l = String::new();
        out.read_line(&mut l).unwrap();
        let (bound, target) = l.trim().split_once('=').unwrap();
        fronts.insert(target.to_string(), bound.to_string());
    }
    let peers: Vec<String> = addrs.iter().map(|a| fronts[a].clone()).collect();
    let want = numpy_digest(4, 5000);
    for (k, (alg, rounds)) in [("ring", 6.0), ("halving-doubling", 4.0)].into_iter().enumerate() {
        let answers = all_reduce(&mut ws, &peers, alg, 5000, 10 + k as u64, 4);
        for a in &answers {
            assert_eq!(a["digest"], want.as_str(), "{alg} through the proxy: {a}");
        }
        // Each round waits at least one 5 ms hop; far less than double that on a quiet loopback.
        let t = answers.iter().map(|a| a["mean_s"].as_f64().unwrap()).fold(0.0, f64::max);
        assert!(t >= rounds * 0.005, "{alg}: {t:.4} s for {rounds} rounds of a 5 ms link");
        assert!(t <= rounds * 0.005 * 3.0 + 0.05, "{alg}: {t:.4} s for {rounds} rounds of a 5 ms link");
    }
    let _ = proxy.kill();
    let _ = proxy.wait();
}
