//! Classification post-processing: one row of scores → the top-k classes.

use model_repo::Postprocess;

/// One entry of a classification answer.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Class {
    pub index: usize,
    /// The configured label, or the index as a string when there is none.
    pub label: String,
    pub score: f32,
}

/// The `post.top_k` best classes of `scores` (softmax first if configured),
/// best first; equal scores keep the lower index first, so answers are stable.
pub fn classify(scores: &[f32], post: &Postprocess) -> Vec<Class> {
    let probabilities;
    let scores = if post.softmax {
        probabilities = softmax(scores);
        &probabilities[..]
    } else {
        scores
    };
    // NaN (a broken model) ranks last instead of poisoning the order.
    let key = |i: usize| if scores[i].is_nan() { f32::NEG_INFINITY } else { scores[i] };
    let better = |&a: &usize, &b: &usize| key(b).total_cmp(&key(a)).then(a.cmp(&b));
    let k = (post.top_k as usize).min(scores.len());
    if k == 0 {
        return Vec::new();
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    if k < order.len() {
        // Partition first: only the k winners need sorting (k is ~5 of ~1000).
        order.select_nth_unstable_by(k - 1, better);
        order.truncate(k);
    }
    order.sort_unstable_by(better);
    order
        .into_iter()
        .map(|index| Class {
            index,
            label: post.labels.get(index).cloned().unwrap_or_else(|| index.to_string()),
            score: scores[index],
        })
        .collect()
}

/// Subtracting the maximum keeps `exp` from overflowing on large logits
/// without changing the result.
fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut out: Vec<f32> = logits.iter().map(|&x| (x - max).exp()).collect();
    let sum: f32 = out.iter().sum();
    for v in &mut out {
        *v /= sum;
    }
    out
}

#[cfg(test)]
mod tests {
    use model_repo::PostprocessKind;

    use super::*;

    fn post(top_k: u32, softmax: bool, labels: &[&str]) -> Postprocess {
        Postprocess {
            kind: PostprocessKind::Classification,
            output: None,
            top_k,
            softmax,
            labels: labels.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn indices(classes: &[Class]) -> Vec<usize> {
        classes.iter().map(|c| c.index).collect()
    }

    #[test]
    fn returns_the_top_k_best_first_with_labels() {
        let classes = classify(&[0.1, 0.7, 0.05, 0.15], &post(2, false, &["cat", "dog", "fox", "owl"]));
        assert_eq!(
            classes,
            vec![
                Class { index: 1, label: "dog".into(), score: 0.7 },
                Class { index: 3, label: "owl".into(), score: 0.15 },
            ]
        );
    }

    #[test]
    fn softmax_gives_probabilities_in_the_logits_order() {
        let classes = classify(&[1.0, 3.0, 2.0], &post(3, true, &[]));
        assert_eq!(indices(&classes), vec![1, 2, 0]);
        let e = [1f32.exp(), 3f32.exp(), 2f32.exp()];
        let sum: f32 = e.iter().sum();
        for c in &classes {
            assert!((c.score - e[c.index] / sum).abs() < 1e-6, "{c:?}");
        }
        let total: f32 = classes.iter().map(|c| c.score).sum();
        assert!((total - 1.0).abs() < 1e-6);
    }

    #[test]
    fn softmax_survives_huge_logits() {
        let classes = classify(&[1000.0, 999.0, -1000.0], &post(3, true, &[]));
        assert!(classes.iter().all(|c| c.score.is_finite()), "{classes:?}");
        assert_eq!(indices(&classes), vec![0, 1, 2]);
        assert!((classes[0].score - 1.0 / (1.0 + (-1f32).exp())).abs() < 1e-6);
        assert_eq!(classes[2].score, 0.0);
    }

    #[test]
    fn ties_go_to_the_lower_index() {
        let scores = [0.5, 0.9, 0.5, 0.9, 0.5];
        assert_eq!(indices(&classify(&scores, &post(5, false, &[]))), vec![1, 3, 0, 2, 4]);
        // The partial selection must break ties the same way.
        assert_eq!(indices(&classify(&scores, &post(3, false, &[]))), vec![1, 3, 0]);
    }

    #[test]
    fn k_beyond_the_class_count_returns_every_class() {
        assert_eq!(indices(&classify(&[0.2, 0.8], &post(10, false, &[]))), vec![1, 0]);
        assert!(classify(&[], &post(5, true, &[])).is_empty());
    }

    #[test]
    fn classes_without_a_label_are_named_by_index() {
        let classes = classify(&[0.1, 0.2, 0.7], &post(3, false, &["zero"]));
        let labels: Vec<&str> = classes.iter().map(|c| c.label.as_str()).collect();
        assert_eq!(labels, vec!["2", "1", "zero"]);
    }

    #[test]
    fn nan_scores_rank_last() {
        assert_eq!(indices(&classify(&[f32::NAN, 0.1, 0.3], &post(3, false, &[]))), vec![2, 1, 0]);
    }

    #[test]
    fn serializes_as_the_answer_shows_it() {
        let json = serde_json::to_string(&classify(&[0.25, 0.75], &post(1, false, &["a", "b"]))).unwrap();
        assert_eq!(json, r#"[{"index":1,"label":"b","score":0.75}]"#);
    }
}
