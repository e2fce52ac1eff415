"""The detection part of an evaluation: fit the detectors on clean training embeddings, score
the clean and PGD test images under the TLA paper's protocol, run the adaptive attack against
each detector, and report Table 4's k-NN accuracy.

Protocol (Mao et al. 2019, arXiv 1909.00900, section 5.3, Figure 5): attack every test image with
PGD (MNIST eps 0.3, 100 steps; CIFAR-10 eps 25/255, 20 steps; Tiny ImageNet 25/255, 30 steps),
score all clean AND adversarial images, and compute the ROC AUC with every misclassified image a
positive (detection.protocol_report). The adaptive attack (attacks/adaptive.py, after Carlini &
Wagner 2017) runs at the same eps, step size and steps for each weight of `detection_weights`; per
image the attacker, who knows the detector and its 5%-false-positive threshold, keeps plain PGD's
image unless one of the sweep is stronger against classifier and detector together
(detection.strongest_per_example: misclassified and unflagged, or misclassified with a lower
score), so the 'adaptive' numbers are never better for the defender than the 'plain' ones in
accuracy, TPR and undetected misclassifications. Each adaptive run inside the threat model also
counts for the evaluation's worst-case robust accuracy (evaluate.py).
"""

import functools

import numpy as np
import tensorflow as tf

from tf_metric_robust import detection
from tf_metric_robust.attacks import adaptive
from tf_metric_robust.config import UserError, detector_settings
from tf_metric_robust.evaluation import progress as progress_lines


def reference_embeddings(fns, reference, count, batch_size=200):
    """Embeddings [R, D] and labels [R] of the first `count` clean reference examples: `reference`
    is (images, labels) arrays (export.reference_examples) or a dataset of (image, label)."""
    if isinstance(reference, tf.data.Dataset):
        if reference.element_spec[0].shape.rank == 3:
            reference = reference.batch(batch_size)
        batches = ((x, y) for x, y in reference)
    else:
        images, labels = reference
        batches = (
            (images[i : i + batch_size], labels[i : i + batch_size])
            for i in range(0, len(labels), batch_size)
        )
    embeddings, kept, seen = [], [], 0
    for x, y in batches:
        if seen >= count:
            break
        x, y = x[: count - seen], np.asarray(y)[: count - seen]
        _, embedding = fns.outputs(tf.convert_to_tensor(x, tf.float32))
        if embedding is None:
            raise UserError("detection needs a model that returns an embedding")
        embeddings.append(embedding.numpy())
        kept.append(y.astype(np.int64))
        seen += len(y)
    if not kept:
        raise UserError("detection needs reference (clean training) examples; got none")
    return np.concatenate(embeddings), np.concatenate(kept)


def build_detectors(fns, reference, config, num_classes=None, dataset=None):
    """{'gaussian': GaussianDetector, 'knn': KnnDetector} fitted on the reference embeddings,
    the configured `config.detector` first (it heads the summary and the ROC figure), with the
    options of config.detector_settings (bin/export's rule) for `dataset`.

    num_classes: at least the model's logit classes (default) and the reference's labels.
    """
    ref_emb, ref_labels = reference_embeddings(fns, reference, config.detection_reference)
    num_classes = num_classes or _logit_classes(fns, reference)
    num_classes = max(int(num_classes), int(ref_labels.max()) + 1)
    options = detector_settings(
        config,
        dataset,
        num_classes=num_classes,
        embedding_dim=ref_emb.shape[1],
        counts=np.bincount(ref_labels, minlength=num_classes),
    )
    del options["detector"]  # both are built
    try:
        built = {
            kind: detection.build(kind, ref_emb, ref_labels, num_classes=num_classes, **options)
            for kind in detection.DETECTORS
        }
    except ValueError as error:
        raise UserError(f"detection: {error}") from None
    order = [config.detector] + [name for name in built if name != config.detector]
    return {name: built[name] for name in order}


def _logit_classes(fns, reference):
    """How many classes the model scores: the width of its logits on one reference image."""
    images = next(iter(reference))[0] if isinstance(reference, tf.data.Dataset) else reference[0]
    if images.ndim == 3:  # an unbatched dataset's image
        images = images[None]
    return int(fns.outputs(tf.convert_to_tensor(images[:1], tf.float32))[0].shape[-1])


def bound_adaptive_attack(fns, detector):
    """attacks.adaptive_detector with the detector and the model's (logits, embedding) bound, in
    the registry's calling convention (model_fn, x, y, **settings); model_fn (logits only) is
    ignored in favour of fns.outputs. It shows adaptive_detector's signature (functools.wraps):
    evaluation.plan reads there which settings the attack takes and their defaults."""

    @functools.wraps(adaptive.adaptive_detector)
    def adaptive_detector(model_fn, x, y, **settings):
        del model_fn
        return adaptive.adaptive_detector(fns.outputs, x, y, detector=detector, **settings)

    return adaptive_detector


def _adaptive_fn(fns, detector, settings, weight):
    """A shard function (shards.ShardRunner): the adaptive attack at `weight` -> per example
    the prediction and embedding of its result."""

    def run(x, y, key, params):
        del params
        x_adv = adaptive.adaptive_detector(
            fns.outputs, x, y, detector=detector, weight=weight, seed=key, **settings
        )
        logits, embedding = fns.outputs(x_adv)
        return {"predictions": tf.argmax(logits, -1), "embedding": embedding}

    return run


def _adaptive_outputs(runner, fns, det_name, detector, images, labels, settings, weight):
    """(run name, predictions [N], embeddings [N, D]) of the adaptive attack at one weight, shard
    by shard (key root 'evaluation.adaptive', coordinate: the run's name)."""
    name = f"adaptive.{det_name}.eps{settings['eps']:.4g}.steps{settings['steps']}.weight{weight:g}"
    out = runner.run(
        name,
        _adaptive_fn(fns, detector, settings, weight),
        images,
        labels,
        root="evaluation.adaptive",
    )
    return name, out["predictions"], out["embedding"]


def _scores(detector, embeddings, predictions):
    return detector.score(embeddings, predictions).numpy().astype(np.float64)


def _strongest(candidates, weights, threshold, clean):
    """Protocol numbers and ROC of the per-image strongest of plain PGD (candidates[0]) and the
    adaptive sweep, with how many images each candidate gave."""
    chosen = detection.strongest_per_example(candidates, threshold)
    rows = np.arange(len(chosen))
    scores = np.stack([s for s, _ in candidates])[chosen, rows]
    correct = np.stack([c for _, c in candidates])[chosen, rows]
    numbers, roc = detection.protocol_report(*clean, scores, correct, threshold)
    counts = np.bincount(chosen, minlength=len(candidates))
    numbers["chosen"] = {
        "plain": int(counts[0]),
        **{f"weight {w:g}": int(n) for w, n in zip(weights, counts[1:])},
    }
    return numbers, roc


def run_detection(runner, fns, evidence, plan, config, detectors, progress=progress_lines.quiet):
    """(detection section of the report, ROC curves {label: (fpr, tpr, auc)}, adaptive runs
    {run name: {'eps', 'norm', 'predictions' [N]}}); `progress` gets a line per finished run.

    evidence: run_plan's output with images kept; plan.detection: (eps, run name) of the plain
    PGD runs. For each run and detector: 'plain' and 'adaptive' (strongest per image of plain and
    the sweep) protocol numbers, 'adaptive_sweep' per weight; Table 4's k-NN accuracy.
    """
    if evidence["clean_embedding"] is None:
        raise UserError("detection needs a model that returns an embedding")
    labels, images = evidence["labels"], evidence["images"]
    clean_emb, clean_pred = evidence["clean_embedding"], evidence["clean_predictions"]
    clean_correct = clean_pred == labels
    clean_scores = {name: _scores(d, clean_emb, clean_pred) for name, d in detectors.items()}
    thresholds = {name: detection.threshold_at_fpr(s) for name, s in clean_scores.items()}
    knn = detectors["knn"]
    knn_clean = float(np.mean(knn.classify(clean_emb).numpy() == labels))
    entries, curves, adaptive_runs = [], {}, {}
    for eps, name in plan.detection:
        spec = plan.specs[name]
        settings = {
            key: spec.kwargs[key] for key in ("eps", "step_size", "steps", "norm", "random_start")
        }
        adv_emb, adv_pred = evidence["embeddings"][name], evidence["predictions"][name]
        adv_correct = adv_pred == labels
        entry = {
            "eps": eps,
            "steps": settings["steps"],
            "step_size": settings["step_size"],
            "attack": name,
            "accuracy": float(adv_correct.mean()),
            "knn_accuracy_adversarial": float(np.mean(knn.classify(adv_emb).numpy() == labels)),
            "detectors": {},
        }
        for det_name, detector in detectors.items():
            threshold = thresholds[det_name]
            clean = (clean_scores[det_name], clean_correct)
            plain_scores = _scores(detector, adv_emb, adv_pred)
            plain, plain_roc = detection.protocol_report(
                *clean, plain_scores, adv_correct, threshold
            )
            candidates, sweep = [(plain_scores, adv_correct)], []
            for weight in config.detection_weights:
                run, pred, emb = _adaptive_outputs(
                    runner, fns, det_name, detector, images, labels, settings, weight
                )
                scores = _scores(detector, emb, pred)
                numbers, _ = detection.protocol_report(*clean, scores, pred == labels, threshold)
                sweep.append({"weight": weight, "run": run, **numbers})
                candidates.append((scores, pred == labels))
                adaptive_runs[run] = {"eps": eps, "norm": settings["norm"], "predictions": pred}
                progress(
                    progress_lines.timed(
                        f"detection: adaptive attack on {det_name}, c {weight:g}, eps {eps:.4g}: "
                        f"accuracy {numbers['accuracy']:.4f}",
                        runner.seconds[run],
                    )
                )
            result = {"plain": plain, "adaptive": None, "adaptive_sweep": sweep}
            if sweep:
                result["adaptive"], adaptive_roc = _strongest(
                    candidates, config.detection_weights, threshold, clean
                )
            entry["detectors"][det_name] = result
            if det_name == config.detector or not curves:
                _add_curve(
                    curves, f"{det_name}, PGD-{settings['steps']} eps {eps:.4g}", plain_roc, plain
                )
                if sweep:
                    _add_curve(
                        curves,
                        f"{det_name}, adaptive eps {eps:.4g}",
                        adaptive_roc,
                        result["adaptive"],
                    )
        entries.append(entry)
    summary = {
        "detector": config.detector,
        "protocol": "ROC over all clean and adversarial test images, misclassified = positive "
        "(TLA paper, Fig. 5): auc_misclassified_vs_correct_all",
        "detectors": {name: d.describe() for name, d in detectors.items()},
        "reference_examples": int(detectors["knn"].reference_labels.shape[0]),
        "false_positive_rate": detection.FALSE_POSITIVE_RATE,
        "thresholds": thresholds,
        "adaptive_weights": list(config.detection_weights),
        "knn_accuracy": {
            "k": knn.k,
            "clean": knn_clean,
            "adversarial": {f"{e['eps']:.4g}": e["knn_accuracy_adversarial"] for e in entries},
        },
        "attacks": entries,
    }
    return summary, curves, adaptive_runs


def _add_curve(curves, label, roc, numbers):
    entry = roc["misclassified_vs_correct_all"]
    if entry is not None:
        curves[label] = (entry["fpr"], entry["tpr"], numbers["auc_misclassified_vs_correct_all"])


__all__ = ["bound_adaptive_attack", "build_detectors", "reference_embeddings", "run_detection"]
