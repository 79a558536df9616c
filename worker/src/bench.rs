//! `peftrain-worker allreduce-bench`: a worker that runs only the collective, on a synthetic
//! buffer, through the code path a training step takes (`Comm::setup`, the Collective service,
//! `AllReduce::all_reduce` of a host gradient). bench/allreduce.py drives N of them over
//! stdin/stdout, one JSON line per order and per answer: a setup order to every worker, then
//! a run order to every worker.
//!
//! The buffer's values are small dyadic fractions, so their sum over any number of workers in
//! any order is exact in fp32: the first all-reduce of each order is checked against the closed
//! form, and its digest lets the driver check that every worker holds the same bits.

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::Digest;
use tokio::net::TcpListener;

use crate::collective::{Algorithm, AllReduce, Comm, Gradient, Group};
use crate::service::collective_service;

/// Largest buffer an order may ask for: 512 MiB of fp32 (full fine-tuning of a large model).
pub const MAX_ELEMS: u64 = 128 << 20;
/// Most timed all-reduces per order.
pub const MAX_ITERS: u32 = 10_000;

/// One measurement: set the group up, all-reduce once (checked), then `iters` times back to back.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Order {
    rank: u32,
    peers: Vec<String>,
    generation: u64,
    algorithm: String,
    elems: u64,
    iters: u32,
    /// Only take the group (and the buffer's length, which the service checks chunks
    /// against): the driver sets every worker up before any starts sending.
    #[serde(default)]
    setup_only: bool,
}

#[derive(Debug, Serialize, Default)]
struct Answer {
    ok: bool,
    error: Option<String>,
    /// The checked all-reduce's time, seconds.
    first_s: f64,
    /// Mean time of the timed ones, seconds (back to back: each waits for the whole group's
    /// previous one, as a training step's does).
    mean_s: f64,
    /// Mean time of those spent waiting for a round's first data.
    wait_s: f64,
    bytes_sent: u64,
    /// sha256 of the first result's bits.
    digest: String,
    /// Whether the first result equals the closed-form sum exactly.
    exact: bool,
}

/// Element i of rank r's buffer: (i mod 1024) / 1024 + r / 32, exact in fp32.
fn value(i: usize, rank: u32) -> f32 {
    (i % 1024) as f32 / 1024.0 + rank as f32 / 32.0
}

/// The sum of `value(i, r)` over r < world.
fn sum(i: usize, world: u32) -> f32 {
    let w = world as f64;
    ((i % 1024) as f64 / 1024.0 * w + w * (w - 1.0) / 2.0 / 32.0) as f32
}

async fn run_order(comm: &Comm, o: &Order, step: &mut u64) -> Result<Answer, String> {
    if o.elems == 0 || o.elems > MAX_ELEMS {
        return Err(format!("elems {} (1 to {MAX_ELEMS})", o.elems));
    }
    if o.iters > MAX_ITERS {
        return Err(format!("iters {} (0 to {MAX_ITERS})", o.iters));
    }
    let world = o.peers.len() as u32;
    if world > 256 {
        return Err(format!("{world} peers (at most 256: past that the test values' sums need more than fp32's 24 bits)"));
    }
    let algorithm: Algorithm = o.algorithm.parse()?;
    let algorithm = algorithm.resolve(world as usize, 4 * o.elems);
    if o.setup_only {
        comm.set_buffer_len(o.elems);
        let group = Group { rank: o.rank, world, generation: o.generation, peers: o.peers.clone(), algorithm };
        comm.setup(&group).await.map_err(|e| e.to_string())?;
        return Ok(Answer { ok: true, ..Default::default() });
    }
    if comm.generation() != o.generation || comm.buffer_len() != o.elems {
        return Err(format!("run order for generation {} of {} values before its setup order", o.generation, o.elems));
    }
    let guard = comm.group.read().await;
    let exchange = guard.as_ref().ok_or("no group after setup")?;
    let n = o.elems as usize;
    let mut grad = Gradient::Host((0..n).map(|i| value(i, o.rank)).collect());
    let mut abort = comm.abort.subscribe();
    let mut once = || {
        *step += 1;
        *step
    };
    let t = Instant::now();
    let first = exchange.all_reduce(&comm.inbox, &mut grad, once(), &mut abort).await.map_err(|e| e.to_string())?;
    let first_s = t.elapsed().as_secs_f64();
    let Gradient::Host(buf) = &grad else { return Err("the gradient left host memory".into()) };
    let exact = buf.iter().enumerate().all(|(i, v)| v.to_bits() == sum(i, world).to_bits());
    let mut h = sha2::Sha256::new();
    for v in buf {
        h.update(v.to_le_bytes());
    }
    let digest = hex::encode(h.finalize());
    let mut wait = 0.0;
    let t = Instant::now();
    for _ in 0..o.iters {
        let s = exchange.all_reduce(&comm.inbox, &mut grad, once(), &mut abort).await.map_err(|e| e.to_string())?;
        wait += s.wait_millis / 1000.0;
    }
    let iters = o.iters.max(1) as f64;
    Ok(Answer {
        ok: true,
        error: None,
        first_s,
        mean_s: if o.iters == 0 { 0.0 } else { t.elapsed().as_secs_f64() / iters },
        wait_s: wait / iters,
        bytes_sent: first.bytes_sent,
        digest,
        exact,
    })
}

/// Serves the Collective service on `listen`, prints `{"listening": ADDR}`, then answers each
/// order on stdin with one line on stdout until stdin ends.
pub async fn run(listen: SocketAddr, security: peftrain_net::Security, timeout: Duration) -> anyhow::Result<()> {
    security.require_token("allreduce-bench")?;
    let listener = TcpListener::bind(listen).await.map_err(|e| anyhow::anyhow!("--listen {listen}: {e}"))?;
    let addr = listener.local_addr()?;
    let comm = Arc::new(Comm::new(security.clone(), timeout, 1));
    let served = comm.clone();
    let auth = security.server_auth();
    let mut builder = peftrain_net::serve::server_builder();
    if let Some(tls) = security.server_tls()? {
        builder = builder.tls_config(tls)?;
    }
    tokio::spawn(
        async move { builder.add_service(collective_service(served, auth)).serve_with_incoming(peftrain_net::serve::incoming(listener)).await },
    );
    let say = |v: serde_json::Value| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{v}");
        let _ = out.flush();
    };
    say(serde_json::json!({ "listening": addr.to_string() }));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // On a runtime task, as a training step's all-reduce runs (inside the Step handler), not on
    // the thread that blocks on the runtime.
    let orders = tokio::spawn(async move {
        let mut step = 0u64;
        while let Some(line) = rx.recv().await {
            let answer = match serde_json::from_str::<Order>(&line) {
                Err(e) => Answer { error: Some(format!("order: {e}")), ..Default::default() },
                Ok(o) => run_order(&comm, &o, &mut step).await.unwrap_or_else(|e| Answer { error: Some(e), ..Default::default() }),
            };
            say(serde_json::to_value(&answer).unwrap_or_default());
        }
    });
    orders.await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_closed_form_is_the_fp32_sum_in_any_order() {
        for world in [1u32, 2, 3, 7, 32, 33] {
            for i in [0usize, 1, 511, 1023, 1024, 5000] {
                let mut fwd = 0f32;
                let mut back = 0f32;
                for r in 0..world {
                    fwd += value(i, r);
                    back += value(i, world - 1 - r);
                }
                assert_eq!(fwd.to_bits(), sum(i, world).to_bits(), "world {world} element {i}");
                assert_eq!(back.to_bits(), fwd.to_bits());
            }
        }
    }
}
