"""Tests for tf_metric_robust.detection: ROC/AUC against brute force, kNN scores against NumPy,
Gaussian densities against SciPy/scikit-learn, the TLA paper's protocol on hand-made cases."""

import numpy as np
import pytest
import tensorflow as tf
from scipy.stats import multivariate_normal
from sklearn.covariance import ledoit_wolf

from tf_metric_robust import detection


def _pairwise_auc(scores, is_positive):
    """Brute-force AUC over every (positive, negative) pair, ties counting 1/2."""
    pos, neg = scores[is_positive][:, None], scores[~is_positive][None, :]
    return np.mean((pos > neg) + 0.5 * (pos == neg))


def _numpy_knn_scores(reference, ref_labels, queries, predicted, k, score_type):
    """Brute-force float64 kNN detection scores (stable sort: lower index wins ties, like top_k)."""
    queries, reference = queries.astype(np.float64), reference.astype(np.float64)
    queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    reference = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    sims = queries @ reference.T
    out = []
    for row, pred in zip(sims, predicted):
        if score_type == "similarity":
            same = np.sort(row[ref_labels == pred])[::-1][:k]
            out.append(1.0 - same.mean())
        else:
            nearest = np.argsort(-row, kind="stable")[:k]
            agreement = np.mean(ref_labels[nearest] == pred)
            out.append(1.0 - agreement + (1.0 - row[nearest].mean()) / (2.0 * (k + 1)))
    return np.array(out)


def _clusters(rng, num_classes=4, per_class=100, dim=8, noise=0.1):
    """Separated Gaussian clusters around orthogonal centres 3 e_c: (points, labels, centres)."""
    centres = np.eye(dim)[:num_classes] * 3.0
    labels = np.repeat(np.arange(num_classes), per_class)
    points = centres[labels] + noise * rng.normal(size=(labels.size, dim))
    return points.astype(np.float32), labels, centres


# ------------------------------------------------------------------------------------------ ROC


def test_auc_random_scores_near_half():
    rng = np.random.default_rng(0)
    auc = detection.roc_auc(rng.random(10_000), rng.random(10_000) < 0.3)
    assert abs(auc - 0.5) < 0.05


def test_auc_perfect_inverted_and_tied():
    is_positive = np.r_[np.ones(50, bool), np.zeros(70, bool)]
    scores = np.r_[np.linspace(2, 3, 50), np.linspace(0, 1, 70)]
    assert detection.roc_auc(scores, is_positive) == 1.0
    assert detection.roc_auc(-scores, is_positive) == 0.0
    assert detection.roc_auc(np.full(120, 0.7), is_positive) == 0.5


def test_auc_matches_pairwise_and_curve_area():
    rng = np.random.default_rng(1)
    for size in (2, 7, 300):
        scores = rng.integers(0, 5, size).astype(np.float64)  # many ties
        is_positive = np.r_[True, False, rng.random(size - 2) < 0.4]
        auc = detection.roc_auc(scores, is_positive)
        np.testing.assert_allclose(auc, _pairwise_auc(scores, is_positive), atol=1e-12)
        fpr, tpr, _ = detection.roc_curve(scores, is_positive)
        np.testing.assert_allclose(auc, np.trapezoid(tpr, fpr), atol=1e-12)


def test_roc_curve_shape():
    scores = np.array([0.9, 0.8, 0.8, 0.3, 0.1])
    is_positive = np.array([True, True, False, False, True])
    fpr, tpr, thresholds = detection.roc_curve(scores, is_positive)
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 1, 1])
    np.testing.assert_allclose(tpr, [0, 1 / 3, 2 / 3, 2 / 3, 1])
    np.testing.assert_allclose(thresholds, [np.inf, 0.9, 0.8, 0.3, 0.1])


def test_roc_rejects_one_class_and_bad_shapes():
    with pytest.raises(ValueError, match="one positive and one negative"):
        detection.roc_auc([0.1, 0.2], [True, True])
    with pytest.raises(ValueError, match="differ"):
        detection.roc_curve([0.1, 0.2], [True])
    with pytest.raises(ValueError, match="finite"):
        detection.roc_auc([np.nan, 0.2], [True, False])


# ------------------------------------------------------------------------------------------ kNN


@pytest.mark.parametrize("score_type", ["agreement", "similarity"])
def test_knn_scores_match_numpy(score_type):
    rng = np.random.default_rng(2)
    reference = rng.normal(size=(300, 12)).astype(np.float32)
    ref_labels = rng.integers(0, 5, 300)
    queries = rng.normal(size=(57, 12)).astype(np.float32)
    predicted = rng.integers(0, 5, 57)
    detector = detection.KnnDetector(
        reference, ref_labels, k=9, score_type=score_type, chunk_size=16
    )
    got = detector.score(queries, predicted).numpy()
    want = _numpy_knn_scores(reference, ref_labels, queries, predicted, 9, score_type)
    assert got.shape == (57,) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_chunked_equals_unchunked():
    rng = np.random.default_rng(3)
    reference, ref_labels = rng.normal(size=(200, 10)), rng.integers(0, 3, 200)
    queries, predicted = rng.normal(size=(101, 10)), rng.integers(0, 3, 101)
    scores = [
        detection.KnnDetector(reference, ref_labels, k=7, chunk_size=c)
        .score(queries, predicted)
        .numpy()
        for c in (1, 13, 101, 1000)
    ]
    for other in scores[1:]:
        np.testing.assert_allclose(other, scores[0], atol=1e-6)
    empty = detection.KnnDetector(reference, ref_labels, k=7).score(np.zeros((0, 10)), [])
    assert empty.shape == (0,)


def test_score_inside_tf_function_and_saved_model(tmp_path):
    rng = np.random.default_rng(4)
    reference, ref_labels = rng.normal(size=(120, 6)), rng.integers(0, 4, 120)
    queries, predicted = rng.normal(size=(33, 6)).astype(np.float32), rng.integers(0, 4, 33)
    detector = detection.KnnDetector(reference, ref_labels, k=5, chunk_size=8)
    signature = [
        tf.TensorSpec([None, 6], tf.float32, name="embedding"),
        tf.TensorSpec([None], tf.int64, name="classes"),
    ]
    detector.serve = tf.function(detector.score, input_signature=signature)
    eager = detector.score(queries, predicted).numpy()
    np.testing.assert_allclose(detector.serve(queries, predicted).numpy(), eager, atol=1e-6)
    tf.saved_model.save(detector, str(tmp_path / "detector"))
    loaded = tf.saved_model.load(str(tmp_path / "detector"))
    np.testing.assert_allclose(loaded.serve(queries, predicted).numpy(), eager, atol=1e-6)
    np.testing.assert_array_equal(loaded.reference_labels.numpy(), ref_labels.astype(np.int32))
    with pytest.raises(tf.errors.InvalidArgumentError):
        loaded.serve(queries, np.full(33, 4, np.int64))  # label >= num_classes


def test_cluster_moves_score_high_and_in_cluster_low():
    rng = np.random.default_rng(5)
    points, labels, centres = _clusters(rng)
    detector = detection.KnnDetector(points, labels, k=20)
    clean, clean_labels, _ = _clusters(rng, per_class=25)
    # "Adversarial": embedding moved into the next class's cluster, prediction still its own.
    moved = clean - centres[clean_labels] + centres[(clean_labels + 1) % 4]
    clean_scores = detector.score(clean, clean_labels).numpy()
    moved_scores = detector.score(moved, clean_labels).numpy()
    assert clean_scores.max() < 0.1 and moved_scores.min() > 0.9
    similarity = detection.KnnDetector(points, labels, k=20, score_type="similarity")
    assert (
        similarity.score(clean, clean_labels).numpy().max()
        < similarity.score(moved, clean_labels).numpy().min()
    )


def test_per_class_subsampling_keeps_every_class():
    rng = np.random.default_rng(6)
    labels = np.r_[np.zeros(500, int), np.ones(3, int), np.full(40, 2)]
    embeddings = rng.normal(size=(labels.size, 4))
    detector = detection.KnnDetector(embeddings, labels, k=5, max_reference=10)
    counts = np.bincount(detector.reference_labels.numpy())
    np.testing.assert_array_equal(counts, [10, 3, 10])
    kept = detector.reference_embeddings.numpy()
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    assert np.all(np.abs(kept[:, None] - unit[None]).max(-1).min(1) < 1e-6)  # rows of the input


def test_detector_rejects_bad_arguments():
    embeddings, labels = np.ones((10, 3)), np.r_[np.zeros(8, int), np.ones(2, int)]
    with pytest.raises(ValueError, match="score_type"):
        detection.KnnDetector(embeddings, labels, score_type="lid")
    with pytest.raises(ValueError, match="k must be"):
        detection.KnnDetector(embeddings, labels, k=11)
    with pytest.raises(ValueError, match="k must be"):
        detection.KnnDetector(embeddings, labels, k=3, score_type="similarity")
    with pytest.raises(ValueError, match="num_classes"):
        detection.KnnDetector(embeddings, labels, k=3, num_classes=1)


# ------------------------------------------------------------------------------------- Gaussian


def _scipy_log_densities(reference, labels, queries, covariance):
    """log N(q; mu_c, Sigma_c) [N, C] with scikit-learn's Ledoit-Wolf covariances and SciPy."""
    classes = np.unique(labels)
    means = np.stack([reference[labels == c].mean(0) for c in classes])
    pooled, _ = ledoit_wolf(reference - means[labels], assume_centered=True)
    out = []
    for c in classes:
        sigma = ledoit_wolf(reference[labels == c])[0] if covariance == "per_class" else pooled
        out.append(multivariate_normal(means[c], sigma).logpdf(queries))
    return np.stack(out, axis=1)


@pytest.mark.parametrize("covariance", ["per_class", "tied"])
@pytest.mark.parametrize("dim, per_class", [(12, 100), (640, 60)])  # 640-d from 60: singular S
@pytest.mark.slow
def test_gaussian_densities_match_scipy(covariance, dim, per_class):
    rng = np.random.default_rng(8)
    labels = np.repeat(np.arange(3), per_class)
    scale = rng.uniform(0.2, 3.0, size=(3, dim))  # unequal, anisotropic classes
    reference = rng.normal(size=(labels.size, dim)) * scale[labels] + 2.0 * labels[:, None]
    queries = rng.normal(size=(23, dim)) * 1.5 + 2.0
    detector = detection.GaussianDetector(reference, labels, covariance=covariance, chunk_size=7)
    want = _scipy_log_densities(reference, labels, queries, covariance)
    got = detector.log_densities(queries).numpy()
    assert got.dtype == np.float64 and got.shape == (23, 3)
    np.testing.assert_allclose(got, want, rtol=1e-7, atol=1e-5)
    scores = detector.score(queries.astype(np.float32), np.zeros(23, int)).numpy()
    assert scores.dtype == np.float32
    np.testing.assert_allclose(scores, -want.max(axis=1), rtol=1e-5)
    if dim > per_class:  # the raw sample covariance is singular: shrinkage made it invertible
        assert min(detector.shrinkages) > 0


def test_gaussian_fixed_shrinkage_and_errors():
    rng = np.random.default_rng(9)
    reference, labels = rng.normal(size=(60, 5)), np.repeat([0, 1], 30)
    detector = detection.GaussianDetector(reference, labels, shrinkage=0.0)
    rows = reference[labels == 1]
    sigma = np.cov(rows, rowvar=False, bias=True)
    want = multivariate_normal(rows.mean(0), sigma).logpdf(reference[:4])
    np.testing.assert_allclose(detector.log_densities(reference[:4]).numpy()[:, 1], want, rtol=1e-6)
    with pytest.raises(ValueError, match="needs >= 2 references of every class; 1 classes"):
        detection.GaussianDetector(reference, labels, num_classes=3)
    with pytest.raises(ValueError, match="covariance"):
        detection.GaussianDetector(reference, labels, covariance="diag")
    with pytest.raises(ValueError, match="use covariance='tied'"):
        detection.GaussianDetector(np.zeros((4, 4096)), [0, 0, 1, 1], num_classes=20_000)


def test_gaussian_saved_model_and_gradient(tmp_path):
    rng = np.random.default_rng(10)
    points, labels, centres = _clusters(rng)
    detector = detection.GaussianDetector(points, labels, chunk_size=16)
    queries = points[::7] + 0.05
    detector.serve = tf.function(
        detector.score,
        input_signature=[tf.TensorSpec([None, 8], tf.float32), tf.TensorSpec([None], tf.int64)],
    )
    eager = detector.score(queries, labels[::7]).numpy()
    tf.saved_model.save(detector, str(tmp_path / "gaussian"))
    loaded = tf.saved_model.load(str(tmp_path / "gaussian"))
    np.testing.assert_allclose(loaded.serve(queries, labels[::7]).numpy(), eager, rtol=1e-6)
    # Moving an embedding toward its class mean raises the confidence the adaptive attack uses.
    moved = tf.Variable(centres[labels[::7]] * 0.5, dtype=tf.float32)
    with tf.GradientTape() as tape:
        confidence = tf.reduce_sum(detector.confidence(moved, labels[::7]))
    gradient = tape.gradient(confidence, moved).numpy()
    toward_mean = centres[labels[::7]] - moved.numpy()
    assert np.all(np.sum(gradient * toward_mean, axis=1) > 0)


def test_clean_scores_low_and_moved_scores_high():
    rng = np.random.default_rng(11)
    points, labels, centres = _clusters(rng)
    detector = detection.GaussianDetector(points, labels)
    clean, clean_labels, _ = _clusters(rng, per_class=25)
    between = clean + 0.5 * (centres[(clean_labels + 1) % 4] - centres[clean_labels])
    assert (
        detector.score(clean, clean_labels).numpy().max()
        < detector.score(between, clean_labels).numpy().min()
    )


# ------------------------------------------------------------------------------------- protocol


def test_threshold_flags_at_most_five_percent():
    rng = np.random.default_rng(12)
    for size in (1, 19, 20, 21, 1000):
        clean = rng.normal(size=size)
        threshold = detection.threshold_at_fpr(clean)
        assert np.mean(clean > threshold) <= 0.05
        assert np.mean(clean >= threshold) > 0.05 or size < 20  # the tightest such threshold
    assert detection.threshold_at_fpr(np.ones(50)) == 1.0


def test_protocol_on_a_hand_made_case():
    """4 clean (1 wrong) and 4 adversarial (3 wrong) images with hand-picked scores."""
    clean_scores = np.array([0.1, 0.2, 0.3, 0.9])
    clean_correct = np.array([True, True, True, False])
    adv_scores = np.array([0.8, 0.25, 0.7, 0.05])
    adv_correct = np.array([False, False, False, True])
    numbers, curves = detection.protocol_report(
        clean_scores, clean_correct, adv_scores, adv_correct, threshold=0.5
    )
    # Paper protocol: positives {0.9, 0.8, 0.25, 0.7}, negatives {0.1, 0.2, 0.3, 0.05}:
    # 0.25 loses to 0.3 only, so 15 of 16 pairs are ordered right.
    exact = dict(rel=1e-12, abs=1e-15)  # sklearn's trapezoid area, not a rational count
    assert numbers["auc_misclassified_vs_correct_all"] == pytest.approx(15 / 16, **exact)
    assert numbers["auc_clean_vs_adversarial"] == pytest.approx(
        _pairwise_auc(np.r_[adv_scores, clean_scores], np.arange(8) < 4), **exact
    )
    assert numbers["auc_misclassified_adversarial_vs_correct_clean"] == pytest.approx(
        8 / 9, **exact
    )
    assert numbers["auc_adversarial_misclassified_vs_correct"] == 1.0
    assert numbers["accuracy"] == 0.25 and numbers["clean_accuracy"] == 0.75
    assert numbers["tpr_at_5pct_fpr"] == 2 / 3  # 0.8 and 0.7 flagged, 0.25 not
    assert numbers["undetected_misclassified_at_5pct_fpr"] == 1 / 4  # the 0.25 one
    assert numbers["clean_flagged"] == 0.25
    roc = curves["misclassified_vs_correct_all"]
    assert np.trapezoid(roc["tpr"], roc["fpr"]) == pytest.approx(15 / 16)
    robust, _ = detection.protocol_report(
        clean_scores[:3], clean_correct[:3], adv_scores[3:], adv_correct[3:], 0.5
    )
    assert robust["auc_misclassified_vs_correct_all"] is None
    assert robust["tpr_at_5pct_fpr"] is None and robust["undetected_misclassified_at_5pct_fpr"] == 0


def test_strongest_per_example_prefers_undetected_misclassification():
    plain = (np.array([0.9, 0.1, 0.2, 0.3, 0.3]), np.array([False, True, False, True, True]))
    other = (np.array([0.4, 0.05, 0.6, 0.1, 0.7]), np.array([False, True, False, False, False]))
    chosen = detection.strongest_per_example([plain, other], threshold=0.5)
    # 0: both misclassified, other lower; 1: both correct: plain stays; 2: plain evades, other is
    # flagged; 3: other misclassified and unflagged; 4: other misclassified but flagged: a
    # failure against classifier + detector like plain's correct image, so plain stays.
    np.testing.assert_array_equal(chosen, [1, 0, 0, 1, 0])
    third = (np.array([0.9, 0.9, 0.9, 0.05, 0.9]), np.array([False] * 5))
    chosen = detection.strongest_per_example([plain, other, third], threshold=0.5)
    np.testing.assert_array_equal(chosen, [1, 0, 0, 2, 0])  # 3: the lowest score wins


def _protocol(clean, candidate, threshold):
    return detection.protocol_report(*clean, *candidate, threshold)[0]


@pytest.mark.slow
def test_strongest_per_example_is_never_better_for_the_defender():
    """Against plain PGD alone: accuracy and TPR never rise, undetected misclassifications never
    fall, on random candidates; a case where keeping the lowest score of correctly classified
    images (the choice before) raised the paper-protocol AUC above plain PGD's now lowers it."""
    rng = np.random.default_rng(5)
    for _ in range(200):
        n, k = 30, int(rng.integers(2, 5))
        clean = (rng.random(n), rng.random(n) < 0.9)
        threshold = detection.threshold_at_fpr(clean[0])
        candidates = [(rng.random(n) * 1.5, rng.random(n) < rng.random()) for _ in range(k)]
        chosen = detection.strongest_per_example(candidates, threshold)
        rows = np.arange(n)
        best = (
            np.stack([s for s, _ in candidates])[chosen, rows],
            np.stack([c for _, c in candidates])[chosen, rows],
        )
        plain, adaptive = (_protocol(clean, c, threshold) for c in (candidates[0], best))
        assert adaptive["accuracy"] <= plain["accuracy"]
        assert (
            adaptive["undetected_misclassified_at_5pct_fpr"]
            >= plain["undetected_misclassified_at_5pct_fpr"]
        )
        if plain["tpr_at_5pct_fpr"] is not None:
            assert adaptive["tpr_at_5pct_fpr"] <= plain["tpr_at_5pct_fpr"]
        wrong = ~candidates[0][1]  # plain's misclassified images: never a higher score
        assert np.all(~best[1][wrong]) and np.all(best[0][wrong] <= candidates[0][0][wrong])
    # Correct adversarial images scored high by plain PGD, low by the adaptive attack.
    clean = (np.array([0.1, 0.2, 0.3, 0.4]), np.array([True, True, True, True]))
    plain = (np.array([0.9, 0.8, 0.35, 0.05]), np.array([True, True, False, False]))
    adaptive = (np.array([0.0, 0.0, 0.3, 0.05]), np.array([True, True, False, False]))
    chosen = detection.strongest_per_example([plain, adaptive], threshold=0.5)
    np.testing.assert_array_equal(chosen, [0, 0, 1, 0])
    best = (np.where(chosen, adaptive[0], plain[0]), np.where(chosen, adaptive[1], plain[1]))
    auc = "auc_misclassified_vs_correct_all"
    before = _protocol(clean, adaptive, 0.5)[auc]  # every image from the adaptive attack
    assert _protocol(clean, best, 0.5)[auc] <= _protocol(clean, plain, 0.5)[auc] < before


def test_build_and_knn_classify():
    rng = np.random.default_rng(13)
    points, labels, _ = _clusters(rng)
    knn = detection.build("knn", points, labels, k=500)  # k capped at the reference size
    assert knn.k == len(labels)
    small = detection.build("knn", points, labels, k=5)
    queries, query_labels, _ = _clusters(rng, per_class=10)
    np.testing.assert_array_equal(small.classify(queries).numpy(), query_labels)
    built = detection.build("gaussian", points, labels, covariance="tied")
    direct = detection.GaussianDetector(points, labels, covariance="tied")
    np.testing.assert_array_equal(
        built.score(queries, query_labels).numpy(), direct.score(queries, query_labels).numpy()
    )
    with pytest.raises(ValueError, match="detector must be"):
        detection.build("lid", points, labels)
