//! The numbers of `vlm eval` and `vlm calibrate`, as pure functions over scores: top-k accuracy,
//! per-class recall and confusions of a zero-shot classifier; precision, recall and F1 of one
//! label at a threshold, and the exact threshold search over a label's scores.

use std::cmp::Ordering;
use std::collections::BTreeMap;

/// Where the true class ranks among all classes for one image: 0 when it is the best. Ties are
/// broken by class order (the lower index ranks first), as `classify` sorts its predictions.
pub(crate) fn rank_of(truth: usize, scores: &[f32]) -> usize {
    let own = scores[truth];
    scores
        .iter()
        .enumerate()
        .filter(|&(j, s)| match s.total_cmp(&own) {
            Ordering::Greater => true,
            Ordering::Equal => j < truth,
            Ordering::Less => false,
        })
        .count()
}

/// The predicted class: the best score, the lowest index among equals.
pub(crate) fn argmax(scores: &[f32]) -> usize {
    let mut best = 0;
    for (j, s) in scores.iter().enumerate() {
        if s.total_cmp(&scores[best]) == Ordering::Greater {
            best = j;
        }
    }
    best
}

/// Counts of a zero-shot evaluation, filled one image at a time.
#[derive(Debug, Clone)]
pub(crate) struct Tally {
    /// The k of "top-5": 5, or the number of classes when there are fewer.
    pub k: usize,
    /// Images of each class.
    pub images: Vec<usize>,
    /// Images of each class whose best class was the true one.
    pub top1: Vec<usize>,
    /// Images of each class whose true class was among the `k` best.
    pub topk: Vec<usize>,
    /// Per true class: predicted class -> images, for wrong predictions only (None: not kept).
    pub confusions: Option<Vec<BTreeMap<usize, usize>>>,
}

/// The headline numbers of a tally; `None` where no image was evaluated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Summary {
    pub top1: Option<f64>,
    pub top5: Option<f64>,
    pub mean_per_class_recall: Option<f64>,
    pub images: usize,
}

impl Tally {
    pub(crate) fn new(classes: usize, confusions: bool) -> Tally {
        Tally {
            k: classes.min(5),
            images: vec![0; classes],
            top1: vec![0; classes],
            topk: vec![0; classes],
            confusions: confusions.then(|| vec![BTreeMap::new(); classes]),
        }
    }

    /// One image of class `truth` with a score per class (any monotonic score: cosines rank as
    /// probabilities do).
    pub(crate) fn add(&mut self, truth: usize, scores: &[f32]) {
        let rank = rank_of(truth, scores);
        self.images[truth] += 1;
        if rank == 0 {
            self.top1[truth] += 1;
        } else if let Some(c) = &mut self.confusions {
            *c[truth].entry(argmax(scores)).or_insert(0) += 1;
        }
        if rank < self.k {
            self.topk[truth] += 1;
        }
    }

    /// Recall of class `c` (its top-1 accuracy); `None` for a class without images.
    pub(crate) fn recall(&self, c: usize) -> Option<f64> {
        (self.images[c] > 0).then(|| self.top1[c] as f64 / self.images[c] as f64)
    }

    pub(crate) fn summary(&self) -> Summary {
        let images: usize = self.images.iter().sum();
        let frac = |n: usize| (images > 0).then(|| n as f64 / images as f64);
        let recalls: Vec<f64> = (0..self.images.len())
            .filter_map(|c| self.recall(c))
            .collect();
        Summary {
            top1: frac(self.top1.iter().sum()),
            top5: frac(self.topk.iter().sum()),
            mean_per_class_recall: (!recalls.is_empty())
                .then(|| recalls.iter().sum::<f64>() / recalls.len() as f64),
            images,
        }
    }

    /// Class `c`'s most frequent wrong predictions, most first (ties: class order), at most `n`.
    pub(crate) fn top_confusions(&self, c: usize, n: usize) -> Vec<(usize, usize)> {
        let Some(all) = &self.confusions else {
            return Vec::new();
        };
        let mut list: Vec<(usize, usize)> = all[c].iter().map(|(&p, &k)| (p, k)).collect();
        list.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        list.truncate(n);
        list
    }
}

/// One label's decisions at a threshold against the truth.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Counts {
    pub true_pos: usize,
    pub false_pos: usize,
    pub false_neg: usize,
}

impl Counts {
    /// `None` when nothing was predicted positive.
    pub(crate) fn precision(&self) -> Option<f64> {
        let predicted = self.true_pos + self.false_pos;
        (predicted > 0).then(|| self.true_pos as f64 / predicted as f64)
    }

    /// `None` when there are no positives.
    pub(crate) fn recall(&self) -> Option<f64> {
        let positives = self.true_pos + self.false_neg;
        (positives > 0).then(|| self.true_pos as f64 / positives as f64)
    }

    /// `2 TP / (2 TP + FP + FN)`: 0 when nothing is right, `None` when there is nothing to get
    /// right or wrong (no positives, none predicted).
    pub(crate) fn f1(&self) -> Option<f64> {
        let den = 2 * self.true_pos + self.false_pos + self.false_neg;
        (den > 0).then(|| 2.0 * self.true_pos as f64 / den as f64)
    }
}

/// The decisions `score >= threshold` (as `vlm tag` decides) against `truth`.
pub(crate) fn counts_at(scores: &[f32], truth: &[bool], threshold: f32) -> Counts {
    let mut c = Counts::default();
    for (&s, &t) in scores.iter().zip(truth) {
        match (s >= threshold, t) {
            (true, true) => c.true_pos += 1,
            (true, false) => c.false_pos += 1,
            (false, true) => c.false_neg += 1,
            (false, false) => {}
        }
    }
    c
}

/// What a threshold search aims at.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Target {
    /// The highest F1.
    F1,
    /// The lowest threshold whose precision is at least this.
    Precision(f64),
}

/// A threshold chosen from the data, with its decisions on that data.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Choice {
    pub threshold: f32,
    pub counts: Counts,
}

/// The exact search over the candidate thresholds, the distinct scores (a threshold equal to a
/// score keeps every image scoring at least that): for [`Target::F1`] the one with the highest F1
/// (compared as exact fractions; ties go to the lowest threshold, which keeps more recall), for
/// [`Target::Precision`] the lowest one whose precision reaches the target. `None` when there are
/// no positives, or when no threshold reaches the precision.
///
/// The threshold returned is not the winning score itself but a short decimal between it and the
/// next lower score (see [`threshold_between`]): it makes the same decisions on this data, and a
/// score that moves by a rounding error on another run (a different batch) stays on its side.
pub(crate) fn search(scores: &[f32], truth: &[bool], target: Target) -> Option<Choice> {
    let positives = truth.iter().filter(|&&t| t).count();
    if positives == 0 {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let (mut tp, mut predicted) = (0usize, 0usize);
    // (index into `order` where the kept group ends, tp, predicted) of the best so far.
    let mut best: Option<(usize, usize, usize)> = None;
    let mut i = 0;
    while i < order.len() {
        let s = scores[order[i]];
        while i < order.len() && scores[order[i]] == s {
            tp += usize::from(truth[order[i]]);
            predicted += 1;
            i += 1;
        }
        let better = match target {
            // F1 = 2 tp / (predicted + positives); >= moves ties to the lower threshold.
            Target::F1 => best.is_none_or(|(_, btp, bpred)| {
                (2 * tp) * (bpred + positives) >= (2 * btp) * (predicted + positives)
            }),
            Target::Precision(p) => tp as f64 >= p * predicted as f64 - 1e-12,
        };
        if better {
            best = Some((i, tp, predicted));
        }
    }
    let (end, tp, predicted) = best?;
    let kept = scores[order[end - 1]];
    let below = order.get(end).map(|&j| scores[j]);
    Some(Choice {
        threshold: threshold_between(below, kept),
        counts: Counts {
            true_pos: tp,
            false_pos: predicted - tp,
            false_neg: positives - tp,
        },
    })
}

/// The shortest decimal (1 to 9 digits, nearest the midpoint) `t` with `below < t <= kept` as an
/// f32, so `score >= t` keeps `kept` and drops `below`; 0 (or the score itself, when 0 is not
/// below it) when nothing is below.
pub(crate) fn threshold_between(below: Option<f32>, kept: f32) -> f32 {
    let below = match below {
        Some(b) => b,
        None if kept > 0.0 => 0.0,
        None => return kept,
    };
    let mid = (f64::from(below) + f64::from(kept)) / 2.0;
    for digits in 1..=9 {
        let scale = 10f64.powi(digits);
        let t = ((mid * scale).round() / scale) as f32;
        if t > below && t <= kept {
            return t;
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (xorshift), so the tests need no crate.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn unit(&mut self) -> f32 {
            (self.next() % 1000) as f32 / 1000.0
        }
    }

    #[test]
    fn ranks_break_ties_by_class_order() {
        assert_eq!(rank_of(1, &[0.1, 0.5, 0.3]), 0);
        assert_eq!(rank_of(2, &[0.1, 0.5, 0.3]), 1);
        assert_eq!(rank_of(0, &[0.1, 0.5, 0.3]), 2);
        assert_eq!(rank_of(1, &[0.5, 0.5, 0.3]), 1);
        assert_eq!(rank_of(0, &[0.5, 0.5, 0.3]), 0);
        assert_eq!(argmax(&[0.5, 0.7, 0.7]), 1);
    }

    #[test]
    fn tally_counts_top_k_recall_and_confusions() {
        let mut t = Tally::new(3, true);
        assert_eq!(t.k, 3);
        t.add(0, &[0.9, 0.1, 0.0]); // right
        t.add(0, &[0.1, 0.9, 0.0]); // -> 1
        t.add(1, &[0.0, 0.2, 0.8]); // -> 2
        t.add(1, &[0.0, 0.9, 0.8]); // right
        let s = t.summary();
        assert_eq!(s.images, 4);
        assert_eq!(s.top1, Some(0.5));
        assert_eq!(s.top5, Some(1.0)); // k = 3 of 3 classes
        assert_eq!(t.recall(2), None); // no images: left out of the mean
        assert_eq!(s.mean_per_class_recall, Some(0.5));
        assert_eq!(t.top_confusions(0, 3), [(1, 1)]);
        assert_eq!(t.top_confusions(1, 3), [(2, 1)]);
        let mut t = Tally::new(7, false);
        assert_eq!(t.k, 5);
        t.add(6, &[0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1]);
        assert_eq!((t.top1[6], t.topk[6]), (0, 0));
        t.add(6, &[0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.35]);
        assert_eq!(t.topk[6], 1);
        assert!(t.top_confusions(6, 3).is_empty());
        assert_eq!(Tally::new(2, false).summary().top1, None);
    }

    #[test]
    fn precision_recall_and_f1() {
        let c = Counts {
            true_pos: 3,
            false_pos: 1,
            false_neg: 2,
        };
        assert_eq!(c.precision(), Some(0.75));
        assert_eq!(c.recall(), Some(0.6));
        assert_eq!(c.f1(), Some(6.0 / 9.0));
        let f1 = 2.0 * 0.75 * 0.6 / (0.75 + 0.6);
        assert!((c.f1().unwrap() - f1).abs() < 1e-12);
        let none = Counts::default();
        assert_eq!(
            (none.precision(), none.recall(), none.f1()),
            (None, None, None)
        );
        let wrong = Counts {
            true_pos: 0,
            false_pos: 2,
            false_neg: 0,
        };
        assert_eq!((wrong.precision(), wrong.f1()), (Some(0.0), Some(0.0)));
        assert_eq!(
            counts_at(&[0.9, 0.5, 0.5, 0.1], &[true, false, true, true], 0.5),
            Counts {
                true_pos: 2,
                false_pos: 1,
                false_neg: 1
            }
        );
    }

    /// The brute-force answer: every distinct score as a threshold, the best by F1 (ties: lowest)
    /// or the lowest reaching the precision.
    fn brute_force(scores: &[f32], truth: &[bool], target: Target) -> Option<(f32, Counts)> {
        if !truth.contains(&true) {
            return None;
        }
        let mut candidates: Vec<f32> = scores.to_vec();
        candidates.sort_by(|a, b| a.total_cmp(b));
        candidates.dedup();
        let mut best: Option<(f32, Counts, f64)> = None;
        for &t in &candidates {
            let c = counts_at(scores, truth, t);
            let value = match target {
                Target::F1 => c.f1().unwrap_or(0.0),
                Target::Precision(p) => match c.precision() {
                    Some(q) if q >= p => 1.0,
                    _ => continue,
                },
            };
            // Ascending thresholds: only a strictly better value replaces the lower one.
            if best.is_none_or(|(_, _, v)| value > v + 1e-12) {
                best = Some((t, c, value));
            }
        }
        best.map(|(t, c, _)| (t, c))
    }

    #[test]
    fn search_finds_what_brute_force_finds() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for case in 0..2000 {
            let n = 1 + (rng.next() % 40) as usize;
            // Coarse scores, so that ties are common.
            let scores: Vec<f32> = (0..n).map(|_| (rng.unit() * 20.0).round() / 20.0).collect();
            let truth: Vec<bool> = scores.iter().map(|&s| rng.unit() < 0.3 + 0.5 * s).collect();
            let targets = [Target::F1, Target::Precision(0.5), Target::Precision(0.9)];
            for target in targets {
                let got = search(&scores, &truth, target);
                let want = brute_force(&scores, &truth, target);
                match (got, want) {
                    (None, None) => {}
                    (Some(g), Some((t, c))) => {
                        assert_eq!(g.counts, c, "case {case} {target:?} {scores:?} {truth:?}");
                        // Same decisions as the winning score, on every image.
                        assert_eq!(counts_at(&scores, &truth, g.threshold), c, "case {case}");
                        for &s in &scores {
                            assert_eq!(
                                s >= g.threshold,
                                s >= t,
                                "case {case}: {s} vs {}",
                                g.threshold
                            );
                        }
                        assert!((0.0..=1.0).contains(&g.threshold));
                    }
                    (g, w) => panic!("case {case} {target:?}: {g:?} vs {w:?}"),
                }
            }
        }
    }

    #[test]
    fn thresholds_are_short_and_strictly_between() {
        assert_eq!(threshold_between(Some(0.5), 0.75), 0.6);
        assert_eq!(threshold_between(Some(0.61), 0.63), 0.62);
        assert_eq!(threshold_between(None, 0.3), 0.2);
        assert_eq!(threshold_between(None, 0.0), 0.0);
        let a = 0.3f32;
        let b = f32::from_bits(a.to_bits() + 1);
        assert_eq!(threshold_between(Some(a), b), b);
        let t = threshold_between(Some(0.123_456), 0.123_457);
        assert!(t > 0.123_456 && t <= 0.123_457, "{t}");
    }
}
