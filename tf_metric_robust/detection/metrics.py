"""ROC curves and AUC (scikit-learn), the 5%-FPR threshold and the TLA detection protocol.

The ROC runs over ALL clean and adversarial test images, misclassified = positive (TLA paper,
Figure 5, after Zheng & Hong 2018); the other AUCs and the operating point are ours, named in
protocol_report.
"""

import numpy as np
import sklearn.metrics


def _check_binary_problem(scores, is_positive):
    """Returns (scores float64 [N], is_positive bool [N]); ValueError unless both classes occur."""
    scores = np.asarray(scores, np.float64).reshape(-1)
    is_positive = np.asarray(is_positive, bool).reshape(-1)
    if scores.shape != is_positive.shape:
        raise ValueError(f"scores {scores.shape} and is_positive {is_positive.shape} differ")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores must be finite")
    if is_positive.all() or not is_positive.any():
        raise ValueError("ROC needs at least one positive and one negative example")
    return scores, is_positive


def roc_curve(scores, is_positive):
    """ROC curve of flagging `score >= threshold` as positive, one point per distinct score.

    Returns (fpr, tpr, thresholds) float64 arrays starting at (0, 0) with threshold +inf and
    ending at (1, 1); tied scores form one (diagonal) segment, so its trapezoid area is roc_auc.
    """
    scores, is_positive = _check_binary_problem(scores, is_positive)
    return sklearn.metrics.roc_curve(is_positive, scores, drop_intermediate=False)


def roc_auc(scores, is_positive):
    """Area under the ROC curve = P(score of a positive > score of a negative) + P(tie) / 2.

    sklearn.metrics.roc_auc_score (the trapezoid area of roc_curve); float in [0, 1].
    """
    scores, is_positive = _check_binary_problem(scores, is_positive)
    return float(sklearn.metrics.roc_auc_score(is_positive, scores))


def _roc_entry(scores, is_positive):
    """(auc, {'fpr', 'tpr', 'thresholds'}) or (None, None) when a class is empty."""
    if is_positive.all() or not is_positive.any():
        return None, None
    fpr, tpr, thresholds = roc_curve(scores, is_positive)
    return roc_auc(scores, is_positive), {"fpr": fpr, "tpr": tpr, "thresholds": thresholds}


FALSE_POSITIVE_RATE = 0.05  # the operating point of 'tpr_at_5pct_fpr' and the export threshold


def threshold_at_fpr(clean_scores, fpr=FALSE_POSITIVE_RATE):
    """The smallest clean score t such that flagging `score > t` flags at most `fpr` of
    `clean_scores` (about 5% of clean images with the default)."""
    scores = np.sort(np.asarray(clean_scores, np.float64).reshape(-1))
    if scores.size == 0 or not 0.0 <= fpr < 1.0:
        raise ValueError(f"need clean scores and fpr in [0, 1), got {scores.size} and {fpr}")
    allowed_below = int(np.ceil((1.0 - fpr) * scores.size - 1e-9))  # kept at or below t
    return float(scores[max(allowed_below, 1) - 1])


def protocol_report(
    clean_scores, clean_correct, adversarial_scores, adversarial_correct, threshold
):
    """Detection numbers of one attack from per-image scores and correctness, as NumPy arrays.

    'auc_misclassified_vs_correct_all': the TLA paper's Figure 5 protocol: ROC over all clean AND
    adversarial images, every misclassified image positive, every correct one negative.
    'auc_clean_vs_adversarial': every adversarial image positive, every clean one negative.
    'auc_misclassified_adversarial_vs_correct_clean': successful attacks vs correct clean images.
    'auc_adversarial_misclassified_vs_correct': both sides adversarial.
    At `threshold` (flag = score > threshold, e.g. threshold_at_fpr of the clean scores):
    'tpr_at_5pct_fpr' = flagged misclassified adversarial / misclassified adversarial;
    'undetected_misclassified_at_5pct_fpr' = adversarial images both misclassified and not
    flagged / all adversarial images (the attack's success rate against model + detector).
    Returns (numbers dict, curves dict name -> ROC entry or None).
    """
    clean_scores, adversarial_scores = (
        np.asarray(s, np.float64).reshape(-1) for s in (clean_scores, adversarial_scores)
    )
    clean_correct, adversarial_correct = (
        np.asarray(c, bool).reshape(-1) for c in (clean_correct, adversarial_correct)
    )
    if (
        clean_scores.shape != clean_correct.shape
        or adversarial_scores.shape != adversarial_correct.shape
    ):
        raise ValueError("need one correctness flag per score")
    adversarial_wrong = ~adversarial_correct
    flagged = adversarial_scores > threshold

    def binary(positive, negative):
        scores = np.concatenate([positive, negative])
        return _roc_entry(scores, np.arange(scores.size) < positive.size)

    all_scores = np.concatenate([clean_scores, adversarial_scores])
    all_wrong = ~np.concatenate([clean_correct, adversarial_correct])
    curves = {
        "misclassified_vs_correct_all": _roc_entry(all_scores, all_wrong),
        "clean_vs_adversarial": binary(adversarial_scores, clean_scores),
        "misclassified_adversarial_vs_correct_clean": binary(
            adversarial_scores[adversarial_wrong], clean_scores[clean_correct]
        ),
        "adversarial_misclassified_vs_correct": binary(
            adversarial_scores[adversarial_wrong], adversarial_scores[adversarial_correct]
        ),
    }
    numbers = {f"auc_{name}": auc for name, (auc, _) in curves.items()}
    numbers.update(
        {
            "accuracy": float(adversarial_correct.mean()),
            "clean_accuracy": float(clean_correct.mean()),
            "threshold": float(threshold),
            "clean_flagged": float(np.mean(clean_scores > threshold)),
            "tpr_at_5pct_fpr": (
                float(flagged[adversarial_wrong].mean()) if adversarial_wrong.any() else None
            ),
            "undetected_misclassified_at_5pct_fpr": float(np.mean(adversarial_wrong & ~flagged)),
            "num_clean": int(clean_scores.size),
            "num_adversarial": int(adversarial_scores.size),
            "num_adversarial_misclassified": int(adversarial_wrong.sum()),
            "mean_score_clean": float(clean_scores.mean()),
            "mean_score_adversarial": float(adversarial_scores.mean()),
        }
    )
    return numbers, {name: roc for name, (_, roc) in curves.items()}


def strongest_per_example(candidates, threshold):
    """Index [N] of the image an attacker who knows the detector keeps per example: plain PGD's
    (candidates[0]) unless another candidate is stronger against classifier AND detector.

    The adaptive attack (attacks/adaptive.py) follows Carlini & Wagner, "Adversarial examples are
    not easily detected" (AISec 2017): one objective of the classifier's CW margin capped at kappa
    and the detector's confidence; it succeeds on an image that is misclassified and not flagged
    (score <= threshold). Candidate k replaces plain PGD's image exactly when k is misclassified
    and its score is below plain's (plain misclassified) or at most `threshold` (plain correct);
    among those the lowest score wins, ties going to the earlier candidate. A correct image and a
    flagged misclassified one both fail against the pair, so neither replaces a correct plain one.

    So per example a misclassified image's score never rises and no image turns correct: against
    plain PGD, protocol_report's accuracy and tpr_at_5pct_fpr never rise and
    undetected_misclassified_at_5pct_fpr never falls. The paper-protocol AUC falls with every
    lowered score; an image plain PGD left correct that turns misclassified and unflagged moves
    from the negatives to the positives, which can move that AUC either way.

    candidates: list of (scores [N], correct [N]) NumPy arrays, plain PGD first.
    """
    scores = np.stack([np.asarray(s, np.float64) for s, _ in candidates])
    wrong = ~np.stack([np.asarray(c, bool) for _, c in candidates])
    limit = np.where(wrong[0], scores[0], threshold)
    # The lowest key wins (argmin: the first of equals); +inf marks a candidate that may not win,
    # so where every key is +inf plain PGD (index 0) stays.
    key = np.where(wrong & (scores <= limit), scores, np.inf)
    key[0] = np.where(wrong[0], scores[0], np.inf)
    return np.argmin(key, axis=0)
