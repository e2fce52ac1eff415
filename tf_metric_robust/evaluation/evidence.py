"""The per-example evidence every evaluator of an evaluation reads (evaluators.py): the examples
held in memory, the detectors when asked for, the plan, and its clean pass and every attack run,
shard by shard on every replica and worker (shards.ShardRunner).

Each run gives per example the prediction on its result, the result's distance outside the threat
model and box (sanity.bound_violations, checked by sanity.py) and, for detection runs, the
embedding (detection_protocol.py).
"""

import dataclasses
import functools
import inspect
import json

import numpy as np
import tensorflow as tf

from tf_metric_robust import attacks as attacks_lib
from tf_metric_robust.attacks.autoattack import VERSIONS
from tf_metric_robust.config import EvalConfig, UserError
from tf_metric_robust.evaluation import detection_protocol, sanity
from tf_metric_robust.evaluation import progress as progress_lines
from tf_metric_robust.evaluation.model_fns import ModelFns
from tf_metric_robust.evaluation.plan import Plan, build_plan
from tf_metric_robust.evaluation.shards import DYNAMIC_SETTINGS, ShardRunner

__all__ = ["Evidence", "attack_fn", "gather", "load_examples", "run_plan"]


@dataclasses.dataclass
class Evidence:
    """What the evaluators share: the resolved config, the model, its detectors (None without
    detection), the attack registry, the plan, the runner that ran it and run_plan's output."""

    config: EvalConfig
    fns: ModelFns
    detectors: dict | None
    registry: dict
    plan: Plan
    runner: ShardRunner
    runs: dict  # run_plan's per-example arrays

    @property
    def labels(self):
        """The evaluated examples' labels [N]."""
        return self.runs["labels"]

    @functools.cached_property
    def clean_correct(self):
        """Bool [N]: the clean prediction is right."""
        return self.runs["clean_predictions"] == self.labels

    @functools.cached_property
    def correct(self):
        """Run name -> bool [N] for every run of the plan."""
        return {name: pred == self.labels for name, pred in self.runs["predictions"].items()}

    def accuracy(self, name):
        """The accuracy of a run of the plan, as a Python float."""
        return float(self.correct[name].mean())


def gather(
    model,
    data,
    config,
    *,
    dataset=None,
    num_examples=None,
    reference=None,
    registry=None,
    progress=progress_lines.quiet,
    **runner_options,
):
    """Fits the detectors when asked for, builds the plan, prints its header to `progress` and
    runs it: the Evidence of evaluate() (see its arguments)."""
    config = (config or EvalConfig()).resolve(dataset)
    wants_detectors = config.detection or "adaptive_detector" in config.attacks
    if wants_detectors and reference is None:
        raise UserError("detection and adaptive_detector need reference (clean training) examples")
    registry = dict(attacks_lib.ATTACKS if registry is None else registry)
    fns = model if isinstance(model, ModelFns) else ModelFns(model)
    detectors = None
    if wants_detectors:  # fitted first: the adaptive attack in the plan needs them
        detectors = detection_protocol.build_detectors(fns, reference, config, dataset=dataset)
        # The report's config names the covariance the rule chose (config.detector_settings).
        config = dataclasses.replace(config, detection_covariance=detectors["gaussian"].covariance)
        registry["adaptive_detector"] = detection_protocol.bound_adaptive_attack(
            fns, detectors[config.detector]
        )
    plan = build_plan(config, registry)
    runner = ShardRunner(seed=config.seed, **runner_options)
    x, y = load_examples(data, runner.shard_size, num_examples)
    members = VERSIONS[config.suite_version] if config.suite != "none" else ()
    for line in progress_lines.header(config, plan, len(y), members):
        progress(line)
    runs = run_plan(runner, fns, x, y, plan, registry=registry, progress=progress)
    return Evidence(config, fns, detectors, registry, plan, runner, runs)


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
