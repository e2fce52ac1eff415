"""The per-example evidence of an evaluation: the examples held in memory, the clean pass and
every attack run of a plan, shard by shard on every replica and worker (shards.ShardRunner).

Each run gives per example the prediction on its result, the result's distance outside the threat
model and box (sanity.bound_violations, checked by sanity.py) and, for detection runs, the
embedding (detection_protocol.py).
"""

import inspect
import json

import numpy as np
import tensorflow as tf

from tf_metric_robust.config import UserError
from tf_metric_robust.evaluation import progress as progress_lines
from tf_metric_robust.evaluation import sanity
from tf_metric_robust.evaluation.shards import DYNAMIC_SETTINGS

__all__ = ["attack_fn", "load_examples", "run_plan"]


def load_examples(data, batch_size, num_examples=None):
    """(x float32 [N, ...], y int64 [N]) NumPy arrays from arrays or a tf.data.Dataset (batched
    or not), at most num_examples of them: the whole set is held so shards can be cut anywhere."""
    if not isinstance(data, tf.data.Dataset):
        x, y = (np.asarray(v) for v in data)
        return x[:num_examples].astype(np.float32), y[:num_examples].astype(np.int64)
    if data.element_spec[0].shape.rank == 3:
        data = data.batch(batch_size)
    images, labels, seen = [], [], 0
    for x, y in data:
        if num_examples is not None and seen >= num_examples:
            break
        images.append(np.asarray(x, np.float32))
        labels.append(np.asarray(y, np.int64))
        seen += len(labels[-1])
    if not labels:
        raise UserError("no examples to evaluate (empty dataset or num_examples 0)")
    return np.concatenate(images)[:num_examples], np.concatenate(labels)[:num_examples]


def _clean_fn(fns):
    def clean(x, y, key, params):
        del y, key, params
        logits, embedding = fns.outputs(x)
        out = {"predictions": tf.argmax(logits, -1)}
        if embedding is not None:
            out["embedding"] = embedding
        return out

    return clean


def attack_fn(fns, attack, static, *, takes_seed, keep_embedding, norm):
    """A shard function (shards.ShardRunner) running `attack` with its static settings and the
    dynamic ones from params: per example the prediction on x_adv, its distance outside the
    threat model and box (sanity.bound_violations), and the embedding when kept."""

    def run(x, y, key, params):
        x_adv = attack(
            fns.logits, x, y, **static, **params, **({"seed": key} if takes_seed else {})
        )
        logits, embedding = fns.outputs(x_adv)
        out = {
            "predictions": tf.argmax(logits, -1),
            "violation": sanity.bound_violations(x_adv, x, params["eps"], norm),
        }
        if keep_embedding:
            out["embedding"] = embedding
        return out

    return run


def run_plan(runner, fns, x, y, plan, *, registry, progress=progress_lines.quiet):
    """Runs the clean pass and every attack of `plan` on every shard of (x, y); `progress` gets
    one line per finished run (progress.py).

    Returns per-example evidence as NumPy arrays: 'labels' [N], 'images' [N, H, W, C],
    'clean_predictions' [N], 'clean_embedding' [N, D] or None, 'predictions' name -> [N],
    'embeddings' name -> [N, D] (attacks with keep_embedding), 'violations' name -> max distance
    outside the eps-ball/[0,1], 'seconds' name -> float, 'gradients' (sanity.gradient_stats on
    the first shard).
    """
    if not len(y):
        raise UserError("no examples to evaluate (empty dataset or num_examples 0)")
    clean = runner.run("clean", _clean_fn(fns), x, y)
    progress(
        progress_lines.timed(
            f"clean: accuracy {np.mean(clean['predictions'] == y):.4f}", runner.seconds["clean"]
        )
    )
    first = slice(0, runner.shard_size)
    gradients = sanity.gradient_stats(fns.logits, tf.constant(x[first]), tf.constant(y[first]))
    preds, embs, violations = {}, {}, {}
    for index, (name, spec) in enumerate(plan.specs.items(), 1):
        attack = registry[spec.attack]
        params = {k: v for k, v in spec.kwargs.items() if k in DYNAMIC_SETTINGS}
        static = {k: v for k, v in spec.kwargs.items() if k not in DYNAMIC_SETTINGS}
        takes_seed = "seed" in inspect.signature(attack).parameters
        fn = attack_fn(
            fns,
            attack,
            static,
            takes_seed=takes_seed,
            keep_embedding=spec.keep_embedding,
            norm=spec.kwargs.get("norm", "linf"),
        )
        trace_key = json.dumps([spec.attack, static, spec.keep_embedding], sort_keys=True)
        out = runner.run(name, fn, x, y, params=params, trace_key=trace_key)
        preds[name] = out["predictions"]
        violations[name] = float(out["violation"].max())
        if spec.keep_embedding:
            embs[name] = out["embedding"]
        accuracy = float(np.mean(out["predictions"] == y))
        progress(
            progress_lines.run_line(
                index, len(plan.specs), name, spec, accuracy, runner.seconds[name]
            )
        )
    return {
        "labels": y,
        "images": x,
        "clean_predictions": clean["predictions"],
        "clean_embedding": clean.get("embedding"),
        "gradients": gradients,
        "predictions": preds,
        "embeddings": embs,
        "violations": violations,
        "seconds": {name: runner.seconds[name] for name in plan.specs},
    }
