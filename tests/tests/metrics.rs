//! Evaluation metrics against scikit-learn and scipy (what `evaluate`'s `glue` metric calls)
//! on the same predictions: accuracy, F1, Matthews (binary and three classes), Pearson,
//! Spearman (with ties) and MSE, to 1e-9.

use peftrain::data::Metric;
use peftrain::metrics::Scored;
use peftrain_tests::run_reference;

/// A small seeded generator, so the cases are the same on every run.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

fn cases() -> Vec<Scored> {
    let mut r = Lcg(7);
    let mut v = Vec::new();
    for (n, k, agree) in [(40usize, 2u64, 70u64), (1043, 2, 80), (200, 3, 60), (9, 2, 0), (500, 3, 95)] {
        let gold: Vec<u32> = (0..n).map(|_| (r.next() % k) as u32).collect();
        let predicted = gold.iter().map(|&g| if r.next() % 100 < agree { g } else { (r.next() % k) as u32 }).collect();
        v.push(Scored::Classes { predicted, gold });
    }
    for (n, grid) in [(50usize, 0u64), (1500, 5), (300, 20)] {
        // grid > 0 rounds values to a coarse grid: ties, as STS-B's 0-5 scores have.
        let q = |x: f64| if grid == 0 { x } else { (x * grid as f64).round() / grid as f64 };
        let gold: Vec<f64> = (0..n).map(|_| q((r.next() % 5000) as f64 / 1000.0)).collect();
        let predicted = gold.iter().map(|g| q(g + ((r.next() % 2000) as f64 / 1000.0 - 1.0))).collect();
        v.push(Scored::Scores { predicted, gold });
    }
    v
}

#[test]
fn metrics_equal_scikit_learn_and_scipy() {
    let cases = cases();
    let json: Vec<serde_json::Value> = cases
        .iter()
        .map(|c| match c {
            Scored::Classes { predicted, gold } => serde_json::json!({"kind": "classes", "predicted": predicted, "gold": gold}),
            Scored::Scores { predicted, gold } => serde_json::json!({"kind": "scores", "predicted": predicted, "gold": gold}),
        })
        .collect();
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("cases.json");
    std::fs::write(&path, serde_json::to_vec(&json).unwrap()).unwrap();
    let theirs: Vec<serde_json::Map<String, serde_json::Value>> =
        serde_json::from_str(run_reference("metrics.py", &[path.to_str().unwrap()]).trim()).unwrap();
    let mut compared = 0;
    for (c, t) in cases.iter().zip(&theirs) {
        for (key, want) in t {
            let m: Metric = key.parse().unwrap();
            let ours = c.metric(m).unwrap_or_else(|| panic!("{key} applies to this case"));
            let want = want.as_f64().unwrap();
            assert!((ours - want).abs() <= 1e-9, "{key}: peftrain {ours} vs reference {want}");
            compared += 1;
        }
    }
    assert_eq!(compared, 22, "every metric of every case compared");
}
