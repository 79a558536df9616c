//! Evaluation metrics as GLUE reports them, computed here from the workers' logits: the
//! definitions of scikit-learn (`accuracy_score`, `f1_score`, `matthews_corrcoef`) and scipy
//! (`pearsonr`, `spearmanr` with average ranks for ties), which `evaluate`'s `glue` metric
//! calls. All sums in f64.

use peftrain_spec::task::Metric;

/// What a model predicted for an evaluation set, with the gold labels.
#[derive(Debug, Clone, PartialEq)]
pub enum Scored {
    /// Class ids: the argmax of each example's logits, and its label.
    Classes { predicted: Vec<u32>, gold: Vec<u32> },
    /// A regression's outputs and its targets.
    Scores { predicted: Vec<f64>, gold: Vec<f64> },
}

impl Scored {
    /// From row-major logits [n, num_labels] (num_labels 1: a regression).
    pub fn from_logits(logits: &[f32], num_labels: usize, gold: &Gold) -> Scored {
        match gold {
            Gold::Scores(g) => Scored::Scores { predicted: logits.iter().map(|&v| v as f64).collect(), gold: g.clone() },
            Gold::Classes(g) => Scored::Classes { predicted: logits.chunks(num_labels.max(1)).map(argmax).collect(), gold: g.clone() },
        }
    }

    /// `metric`'s value; None where it does not apply to this kind of prediction.
    pub fn metric(&self, metric: Metric) -> Option<f64> {
        match (self, metric) {
            (Scored::Classes { predicted, gold }, Metric::Accuracy) => Some(accuracy(predicted, gold)),
            (Scored::Classes { predicted, gold }, Metric::F1) => Some(f1(predicted, gold)),
            (Scored::Classes { predicted, gold }, Metric::MatthewsCorrelation) => Some(matthews(predicted, gold)),
            (Scored::Scores { predicted, gold }, Metric::Pearson) => Some(pearson(predicted, gold)),
            (Scored::Scores { predicted, gold }, Metric::Spearmanr) => Some(spearman(predicted, gold)),
            (Scored::Scores { predicted, gold }, Metric::Mse) => Some(mse(predicted, gold)),
            _ => None,
        }
    }
}

/// Gold labels of an evaluation set, in its order.
#[derive(Debug, Clone, PartialEq)]
pub enum Gold {
    Classes(Vec<u32>),
    Scores(Vec<f64>),
}

/// The first index of the largest value, as numpy's argmax (a NaN never wins).
pub fn argmax(row: &[f32]) -> u32 {
    let mut best = 0usize;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] || row[best].is_nan() && !v.is_nan() {
            best = i;
        }
    }
    best as u32
}

pub fn accuracy(predicted: &[u32], gold: &[u32]) -> f64 {
    if gold.is_empty() {
        return 0.0;
    }
    predicted.iter().zip(gold).filter(|(p, g)| p == g).count() as f64 / gold.len() as f64
}

/// Binary F1 of class 1 (scikit-learn's `pos_label=1`); 0 when there is no positive at all
/// (its `zero_division` default).
pub fn f1(predicted: &[u32], gold: &[u32]) -> f64 {
    let (mut tp, mut fp, mut fn_) = (0u64, 0u64, 0u64);
    for (&p, &g) in predicted.iter().zip(gold) {
        match (p == 1, g == 1) {
            (true, true) => tp += 1,
            (true, false) => fp += 1,
            (false, true) => fn_ += 1,
            (false, false) => {}
        }
    }
    let denom = 2 * tp + fp + fn_;
    if denom == 0 {
        0.0
    } else {
        2.0 * tp as f64 / denom as f64
    }
}

/// Matthews correlation over any number of classes, from the confusion matrix as
/// scikit-learn computes it; 0 when either side predicts a single class.
pub fn matthews(predicted: &[u32], gold: &[u32]) -> f64 {
    let k = predicted.iter().chain(gold).map(|&c| c as usize + 1).max().unwrap_or(0);
    let (mut t, mut p) = (vec![0f64; k], vec![0f64; k]);
    let mut correct = 0f64;
    for (&pi, &gi) in predicted.iter().zip(gold) {
        t[gi as usize] += 1.0;
        p[pi as usize] += 1.0;
        if pi == gi {
            correct += 1.0;
        }
    }
    let s = gold.len() as f64;
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    let cov_ytyp = correct * s - dot(&t, &p);
    let cov_ypyp = s * s - dot(&p, &p);
    let cov_ytyt = s * s - dot(&t, &t);
    if cov_ypyp * cov_ytyt == 0.0 {
        return 0.0;
    }
    cov_ytyp / (cov_ytyt * cov_ypyp).sqrt()
}

/// Pearson's r (scipy's `pearsonr`: centred, then normalised, clipped to [-1, 1]); NaN for a
/// constant input, as scipy returns.
pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len().min(y.len());
    if n < 2 {
        return f64::NAN;
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / n as f64;
    let (mx, my) = (mean(&x[..n]), mean(&y[..n]));
    let xm: Vec<f64> = x[..n].iter().map(|v| v - mx).collect();
    let ym: Vec<f64> = y[..n].iter().map(|v| v - my).collect();
    let norm = |v: &[f64]| v.iter().map(|a| a * a).sum::<f64>().sqrt();
    let (nx, ny) = (norm(&xm), norm(&ym));
    if nx == 0.0 || ny == 0.0 {
        return f64::NAN;
    }
    let r = xm.iter().zip(&ym).map(|(a, b)| (a / nx) * (b / ny)).sum::<f64>();
    r.clamp(-1.0, 1.0)
}

/// Spearman's rho: Pearson's r of the ranks, ties given their average rank.
pub fn spearman(x: &[f64], y: &[f64]) -> f64 {
    pearson(&ranks(x), &ranks(y))
}

/// Ranks from 1, ties averaged (scipy's `rankdata(method="average")`).
pub fn ranks(v: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..v.len()).collect();
    order.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut out = vec![0f64; v.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && v[order[j + 1]] == v[order[i]] {
            j += 1;
        }
        let rank = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            out[k] = rank;
        }
        i = j + 1;
    }
    out
}

pub fn mse(predicted: &[f64], gold: &[f64]) -> f64 {
    if gold.is_empty() {
        return 0.0;
    }
    predicted.iter().zip(gold).map(|(p, g)| (p - g) * (p - g)).sum::<f64>() / gold.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn degenerate_inputs_follow_scikit_learn_and_scipy() {
        assert_eq!(matthews(&[1, 1, 1], &[0, 1, 0]), 0.0);
        assert_eq!(f1(&[0, 0], &[0, 0]), 0.0);
        assert!(pearson(&[1.0, 1.0, 1.0], &[1.0, 2.0, 3.0]).is_nan());
        assert_eq!(ranks(&[3.0, 1.0, 3.0, 2.0]), vec![3.5, 1.0, 3.5, 2.0]);
        assert_eq!(argmax(&[0.5, 2.0, 2.0]), 1);
        assert_eq!(argmax(&[f32::NAN, 1.0]), 1);
    }
}
