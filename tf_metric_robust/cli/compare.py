"""bin/compare's flags (plus bin/train's, passed on to every run) -> config.CompareConfig."""

import shlex

from absl import flags

from tf_metric_robust import config as cfg
from tf_metric_robust.cli.common import FLAGS, SEED_RANGE, UsageError, number_list, our_flags
from tf_metric_robust.cli.train import define_train_flags

COMPARE_FLAGS = (
    "modes",
    "seeds",
    "output",
    "mode_flags",
    "evaluate_examples",
    "evaluate_flags",
    "parallel",
    "only",
    "collect",
    "reference",
)


def define_compare_flags():
    """Flags of bin/compare, plus bin/train's: a recipe's --flagfile parses, and every training
    flag given (in the flagfile or on the command line) is passed on to each run's bin/train."""
    define_train_flags()
    flags.DEFINE_list(
        "modes",
        ["natural", "pgd", "tla", "trades", "mart"],
        "Entries to compare: "
        f"modes of bin/train ({', '.join(cfg.MODES)}), the variant tla_authors "
        "(TLA with the authors' negatives and positives) or names defined in "
        "--mode_flags.",
    )
    flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds: each entry trains once per seed.")
    flags.DEFINE_string(
        "output",
        "runs/compare",
        "Folder of the comparison: <entry>/seed<k>/ "
        "model_dirs, logs/, results.json, results.md, PNGs, HParams.",
    )
    flags.DEFINE_string(
        "mode_flags",
        "",
        "Per-entry bin/train flags, ';'-separated: "
        "'trades:--beta=1;tla:--margin=0.1'; 'NAME=MODE:--flag=v' defines a new "
        "entry (e.g. 'tla_long=tla:--train_steps=2400').",
    )
    flags.DEFINE_integer(
        "evaluate_examples",
        0,
        "Test examples of the shared evaluation (the first N; 0 = the whole test split).",
        lower_bound=0,
    )
    flags.DEFINE_string(
        "evaluate_flags",
        "",
        "Extra bin/evaluate flags for every run, e.g. '--detection_weights=1 --suite_steps=20'.",
    )
    flags.DEFINE_integer(
        "parallel",
        1,
        "Runs at once on this machine (CPU threads are split between them).",
        lower_bound=1,
    )
    flags.DEFINE_list(
        "only",
        [],
        "Train and evaluate only these ENTRY:SEED pairs (one job of "
        "a cluster; aggregate with --collect afterwards).",
    )
    flags.DEFINE_bool(
        "collect",
        False,
        "Train nothing: aggregate the finished runs found in "
        "--output into results.json/.md, figures and HParams.",
    )
    flags.DEFINE_string("reference", "pgd", "Entry the results are relative to (PGD-AT).")


def compare_config():
    """Parsed flags -> config.CompareConfig; the plan is checked too (TF-free, one-line errors)."""
    from tf_metric_robust.compare import plan

    seeds = number_list(FLAGS.seeds, "seeds", int, cfg.Range(0, SEED_RANGE["upper_bound"]))
    forwarded = ("mode", "seed", "model_dir")  # set per run by bin/compare
    train_args = tuple(
        flag.serialize()
        for flag in our_flags()
        if flag.present and flag.name not in COMPARE_FLAGS + forwarded
    )
    try:
        config = cfg.CompareConfig(
            output=FLAGS.output,
            entries=tuple(m.strip() for m in FLAGS.modes if m.strip()),
            seeds=tuple(seeds),
            train_args=train_args,
            mode_flags=FLAGS.mode_flags,
            evaluate_examples=FLAGS.evaluate_examples,
            evaluate_args=tuple(shlex.split(FLAGS.evaluate_flags)),
            parallel=FLAGS.parallel,
            only=plan.parse_only(FLAGS.only),
            collect=FLAGS.collect,
            reference=FLAGS.reference,
        )
        plan.build(config, cfg.MODES)
        return config
    except ValueError as error:
        raise UsageError(str(error)) from None
