"""The layout of report.json, declared once: every section's keys and their types as TypedDicts,
and check_report, which evaluate() and run.py apply before a report leaves them.

A TypedDict here is closed: a report holds exactly its required keys, and of its NotRequired
keys those that the writer adds (bin/evaluate adds 'outputs', the data split, the detection's
reference split). `float` is a Python float (what the evaluation computes); `Number` is a float or
an int, for values that come from settings as given (eps 0 or 0.0). SCHEMA_VERSION changes when the
layout does.
"""

import types
import typing
from typing import Any, Literal, NotRequired, TypedDict

SCHEMA_VERSION = 3  # 2: compile_seconds; attacks' calls, first_call_seconds, steady_call_seconds
# 3: the suite's call_times per member

Number = float | int


class Versions(TypedDict):
    """Library versions that shape the numbers."""

    python: str
    numpy: str
    tensorflow: str
    keras: str
    tf_metric_robust: str


class Model(TypedDict, total=False):
    """What was evaluated; evaluate() leaves it empty, run.py fills it."""

    source: Literal["checkpoint", "saved_model"]
    model_dir: str | None
    checkpoint: str
    saved_model: str
    recipe: dict[str, Any] | None
    step: int | None


class Data(TypedDict):
    """The evaluated examples; run.py adds where they come from."""

    dataset: str | None
    num_examples: int
    batch_size: int  # examples per shard
    split: NotRequired[str]
    data_dir: NotRequired[str | None]
    num_examples_requested: NotRequired[int | None]


class ThreatModel(TypedDict):
    norm: str
    eps: Number
    step_size: Number
    steps: int
    restarts: int
    random_start: bool
    seed: int


class CallTimes(TypedDict):
    """A run's step calls (shards.ShardRunner.call_times): of each plan run, of each AutoAttack
    member."""

    calls: int  # step calls (a shard per replica each); the first one traces the attack
    first_call_seconds: float | None  # wall time of the first call, compile included
    steady_call_seconds: float | None  # median wall time of the later calls


class AttackEntry(CallTimes):
    """One run of the plan: its settings as called, accuracy, bound check and time (and, from
    CallTimes, its step calls)."""

    attack: str
    groups: list[str]  # the report parts it serves: attacks, eps_sweep, steps_sweep, sanity, ...
    settings: dict[str, Any]
    accuracy: float
    counts_for_robust: bool
    max_bound_violation: float
    seconds: float


class EpsPoint(TypedDict):
    eps: Number
    attack: str
    accuracy: float


class StepsPoint(TypedDict):
    steps: int
    attack: str
    accuracy: float


class Sweeps(TypedDict):
    eps: list[EpsPoint]
    steps: list[StepsPoint]


class Suite(TypedDict):
    """AutoAttack's result (suite.py): accuracy after each member, cumulative."""

    name: str
    version: str
    eps: Number
    norm: str
    steps: int
    queries: int
    num_target_classes: int
    seed: int
    batch_size: int
    attacks: list[str]
    clean_accuracy: float
    attack_accuracy: dict[str, float]
    robust_accuracy: float
    fooled_by: dict[str, int]
    pgd_attack: str | None
    pgd_accuracy: float | None
    warnings: list[str]
    seconds: dict[str, float]
    call_times: dict[str, CallTimes]  # per member; calls 0 where no point was left to attack


class Check(TypedDict):
    """One sanity check (sanity.py); passed None: skipped."""

    name: str
    passed: bool | None
    value: Number | None
    threshold: Number
    detail: str


class Sanity(TypedDict):
    passed: bool
    checks: list[Check]


class ProtocolNumbers(TypedDict):
    """detection.protocol_report's numbers of one attack against one detector."""

    auc_misclassified_vs_correct_all: float | None
    auc_clean_vs_adversarial: float | None
    auc_misclassified_adversarial_vs_correct_clean: float | None
    auc_adversarial_misclassified_vs_correct: float | None
    accuracy: float
    clean_accuracy: float
    threshold: float
    clean_flagged: float
    tpr_at_5pct_fpr: float | None
    undetected_misclassified_at_5pct_fpr: float
    num_clean: int
    num_adversarial: int
    num_adversarial_misclassified: int
    mean_score_clean: float
    mean_score_adversarial: float


class AdaptiveSweepNumbers(ProtocolNumbers):
    """The adaptive attack at one weight c."""

    weight: Number
    run: str


class StrongestNumbers(ProtocolNumbers):
    """The strongest image per example of plain PGD and the sweep; how many each gave."""

    chosen: dict[str, int]


class DetectorResult(TypedDict):
    plain: ProtocolNumbers
    adaptive: StrongestNumbers | None  # None without an adaptive sweep
    adaptive_sweep: list[AdaptiveSweepNumbers]


class DetectionAttack(TypedDict):
    """One PGD radius of the detection protocol."""

    eps: Number
    steps: int
    step_size: Number
    attack: str
    accuracy: float
    knn_accuracy_adversarial: float
    detectors: dict[str, DetectorResult]


class KnnAccuracy(TypedDict):
    k: int
    clean: float
    adversarial: dict[str, float]  # per eps


class Detection(TypedDict):
    """The TLA paper's detection protocol (detection_protocol.py)."""

    detector: str
    protocol: str
    detectors: dict[str, dict[str, Any]]  # each detector's describe()
    reference_examples: int
    false_positive_rate: float
    thresholds: dict[str, float]
    adaptive_weights: list[Number]
    knn_accuracy: KnnAccuracy
    attacks: list[DetectionAttack]
    reference_split: NotRequired[str]


class Distribution(TypedDict):
    replicas: int
    workers: int
    resumed_shards: int


class PerExample(TypedDict):
    """Per example, in data order."""

    labels: list[int]
    clean_predictions: list[int]
    robust: list[bool]  # the worst case
    predictions: dict[str, list[int]]  # run name -> prediction on its result
    suite_fooled_by: list[str] | None  # 'clean', the first member that fooled it, or ''


class Outputs(TypedDict):
    name: str
    report: str
    tensorboard: str | None
    robustbench_json: NotRequired[str]  # --robustbench_json's file (robustbench.py)


class Report(TypedDict):
    """report.json."""

    schema_version: int
    versions: Versions
    model: Model
    data: Data
    threat_model: ThreatModel
    config: dict[str, Any]  # dataclasses.asdict of the resolved EvalConfig
    clean_accuracy: float
    robust_accuracy: float
    robust_attacks: list[str]  # the runs the worst case covers
    attacks: dict[str, AttackEntry]
    sweeps: Sweeps
    suite: Suite | None
    metrics: dict[str, float]  # TensorBoard scalars 'eval/...'
    sanity: Sanity
    detection: Detection | None
    distribution: Distribution
    per_example: PerExample
    figures: dict[str, str]  # kind -> PNG file name beside the report
    seconds: float
    compile_seconds: float  # tracing in `seconds`: per run, first call - median later call
    outputs: NotRequired[Outputs | None]  # bin/evaluate's files; None on a worker


class SchemaError(ValueError):
    """A report that does not follow the declaration."""


def check_report(report):
    """Raises SchemaError naming the first key (in declaration order, as a path such as
    'report.attacks.pgd.accuracy') that is missing, undeclared or of the wrong type."""
    _check(report, Report, "report")
    if report["schema_version"] != SCHEMA_VERSION:
        raise SchemaError(
            f"report.schema_version: {report['schema_version']}, not {SCHEMA_VERSION}"
        )


def _name(kind):
    return getattr(kind, "__name__", str(kind))


def _check(value, kind, where):
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if kind is Any:
        return
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:  # 'X | None': X's own message names the nested key
            return _check(value, options[0], where)
        for option in options:
            try:
                _check(value, option, where)
                return
            except SchemaError:
                pass
        expected = " or ".join(_name(a) for a in args)
        raise SchemaError(f"{where}: expected {expected}, got {type(value).__name__}")
    if origin is Literal:
        if value not in args:
            raise SchemaError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return
    if typing.is_typeddict(kind):
        if not isinstance(value, dict):
            raise SchemaError(
                f"{where}: expected {_name(kind)} (a dict), got {type(value).__name__}"
            )
        fields = typing.get_type_hints(kind)
        for key, field in fields.items():
            if key in value:
                _check(value[key], field, f"{where}.{key}")
            elif key in kind.__required_keys__:
                raise SchemaError(f"{where}.{key}: missing")
        undeclared = [key for key in value if key not in fields]
        if undeclared:
            raise SchemaError(f"{where}.{undeclared[0]}: not a key of {_name(kind)}")
        return
    if origin is list:
        if not isinstance(value, list):
            raise SchemaError(f"{where}: expected a list, got {type(value).__name__}")
        plain = args[0] in (bool, int, float, str)  # per-example lists: one isinstance each
        for index, item in enumerate(value):
            if not plain or not _is(item, args[0]):
                _check(item, args[0], f"{where}[{index}]")
        return
    if origin is dict:
        if not isinstance(value, dict):
            raise SchemaError(f"{where}: expected a dict, got {type(value).__name__}")
        for key, item in value.items():
            if not isinstance(key, str):
                raise SchemaError(f"{where}: key {key!r} is not a string")
            _check(item, args[1], f"{where}.{key}")
        return
    if not _is(value, kind):
        raise SchemaError(f"{where}: expected {_name(kind)}, got {type(value).__name__}")


def _is(value, kind):
    """isinstance, except that a bool is no int or float (a report never holds one for the other)."""
    return isinstance(value, kind) and (kind is bool or not isinstance(value, bool))


__all__ = ["SCHEMA_VERSION", "Report", "SchemaError", "check_report"]
