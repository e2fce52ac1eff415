"""Tests for tf_metric_robust.detection: ROC/AUC against brute force, kNN scores against NumPy."""

import numpy as np
import pytest
import tensorflow as tf

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
    detector = detection.KnnDetector(reference, ref_labels, k=9, score_type=score_type,
                                     chunk_size=16)
    got = detector.score(queries, predicted).numpy()
    want = _numpy_knn_scores(reference, ref_labels, queries, predicted, 9, score_type)
    assert got.shape == (57,) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_chunked_equals_unchunked():
    rng = np.random.default_rng(3)
    reference, ref_labels = rng.normal(size=(200, 10)), rng.integers(0, 3, 200)
    queries, predicted = rng.normal(size=(101, 10)), rng.integers(0, 3, 101)
    scores = [detection.KnnDetector(reference, ref_labels, k=7, chunk_size=c).score(
        queries, predicted).numpy() for c in (1, 13, 101, 1000)]
    for other in scores[1:]:
        np.testing.assert_allclose(other, scores[0], atol=1e-6)
    empty = detection.KnnDetector(reference, ref_labels, k=7).score(np.zeros((0, 10)), [])
    assert empty.shape == (0,)


def test_score_inside_tf_function_and_saved_model(tmp_path):
    rng = np.random.default_rng(4)
    reference, ref_labels = rng.normal(size=(120, 6)), rng.integers(0, 4, 120)
    queries, predicted = rng.normal(size=(33, 6)).astype(np.float32), rng.integers(0, 4, 33)
    detector = detection.KnnDetector(reference, ref_labels, k=5, chunk_size=8)
    signature = [tf.TensorSpec([None, 6], tf.float32, name="embedding"),
                 tf.TensorSpec([None], tf.int64, name="classes")]
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
    assert similarity.score(clean, clean_labels).numpy().max() < similarity.score(
        moved, clean_labels).numpy().min()


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


# ------------------------------------------------------------------------------------- report


def test_detection_report():
    rng = np.random.default_rng(7)
    points, labels, centres = _clusters(rng)
    detector = detection.KnnDetector(points, labels, k=20)
    clean, clean_labels, _ = _clusters(rng, per_class=25)
    clean_predictions = clean_labels.copy()
    clean_predictions[:5] = (clean_predictions[:5] + 1) % 4  # 5 clean mistakes
    # Half of the attacks succeed: the prediction flips to the next class while the embedding
    # (TLA-like) only moves 30% of the way there, so its neighbours still carry the true label.
    target = (clean_labels + 1) % 4
    success = np.arange(clean_labels.size) % 2 == 0
    shift = 0.3 * (centres[target] - centres[clean_labels])
    adversarial = (clean + success[:, None] * shift).astype(np.float32)
    adversarial_predictions = np.where(success, target, clean_labels)
    report = detection.detection_report(detector, clean, clean_predictions, clean_labels,
                                        adversarial, adversarial_predictions, clean_labels)
    assert report["num_clean"] == report["num_adversarial"] == 100
    assert report["num_clean_correct"] == 95 and report["num_adversarial_misclassified"] == 50
    assert report["auc_misclassified_adversarial"] > 0.95
    assert 0.5 < report["auc_clean_vs_adversarial"] < report["auc_misclassified_adversarial"]
    roc = report["roc_misclassified_adversarial"]
    np.testing.assert_allclose(np.trapezoid(roc["tpr"], roc["fpr"]),
                               report["auc_misclassified_adversarial"], atol=1e-12)
    robust = detection.detection_report(detector, clean, clean_labels, clean_labels,
                                        clean, clean_labels, clean_labels)
    assert robust["auc_misclassified_adversarial"] is None
    assert robust["roc_misclassified_adversarial"] is None
    assert robust["auc_clean_vs_adversarial"] == 0.5
