"""Every flag of bin/train, bin/evaluate and bin/export has a range, shown in --help and enforced,
and every bad command line (one table, BAD_VALUES) is refused the same way:
a value outside it is one 'error: --<flag> ...' line on stderr, exit status 2, before TensorFlow
is imported and before anything is written. Numbers may be written as fractions (8/255) everywhere.
"""

import json
import os

import numpy as np
import pytest

import support

pytestmark = (
    pytest.mark.slow
)  # trains beyond a few steps or runs full attacks (make test-fast skips)


TWO_WORKERS = json.dumps(
    {"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, "task": {"type": "worker", "index": 0}}
)
# (entry point, extra flags, the flag the message must name or None, text the message must
# contain[, TF_CONFIG]): every bad command line, each refused in one line before TensorFlow.
BAD_VALUES = [
    ("train", ["--dataset=imagenet21k"], "dataset", "unknown --dataset"),
    ("train", ["--model=resnet1001"], "model", "unknown --model 'resnet1001'"),
    ("train", ["--strategy=horovod"], "strategy", "flag --strategy=horovod"),
    ("train", ["--attack_loss=dlr"], "attack_loss", "flag --attack_loss=dlr"),
    (
        "train",
        ["--strategy=multi_worker", "--batch_size=15"],
        "batch_size",
        "--batch_size 15 is not divisible",
        TWO_WORKERS,
    ),
    (
        "train",
        ["--strategy=multi_worker"],
        None,
        "TF_CONFIG is not a valid cluster specification",
        "{not json",
    ),
    ("train", ["--flagfile=/nonexistent/recipe.flags"], None, "Unable to open flagfile"),
    ("train", ["--learning_rat=0.1"], "learning_rat", "did you mean --learning_rate?"),
    (
        "train",
        ["--dataset=cifar10", "--model=small_cnn", "--data_dir=/nonexistent/tfds"],
        None,
        "Dataset 'cifar10' is not prepared in /nonexistent/tfds",
    ),
    ("train", ["train"], None, "unexpected arguments: train"),
    ("train", ["--data_dir=" + os.path.abspath(__file__)], "data_dir", ""),
    ("train", ["--learning_rate=-1"], "learning_rate", "must be in (0, inf)"),
    ("train", ["--learning_rate=0"], "learning_rate", "must be in (0, inf)"),
    ("train", ["--learning_rate=nan"], "learning_rate", "must be in (0, inf)"),
    ("train", ["--lambda_triplet=-1"], "lambda_triplet", "must be in [0, inf)"),
    ("train", ["--lambda_norm=-1e-4"], "lambda_norm", "must be in [0, inf)"),
    ("train", ["--weight_decay=-0.1"], "weight_decay", "must be in [0, inf)"),
    ("train", ["--label_smoothing=1"], "label_smoothing", "must be in [0, 1)"),
    ("train", ["--label_smoothing=-0.1"], "label_smoothing", "must be in [0, 1)"),
    ("train", ["--momentum=1"], "momentum", "must be in [0, 1)"),
    ("train", ["--momentum=-0.5"], "momentum", "must be in [0, 1)"),
    ("train", ["--margin=-0.05"], "margin", "must be in [0, inf)"),
    ("train", ["--margin_other=-1"], "margin_other", "must be in [0, inf)"),
    ("train", ["--eps=1.5"], "eps", "must be in [0, 1]"),
    ("train", ["--eps=-8/255"], "eps", "must be in [0, 1]"),
    ("train", ["--eps=abc"], "eps", "must be a number or a fraction like 8/255"),
    ("train", ["--eval_eps=2"], "eval_eps", "must be in [0, 1]"),
    ("train", ["--step_size=0"], "step_size", "must be in (0, inf)"),
    ("train", ["--step_size=1/0"], "step_size", "must be a number or a fraction"),
    ("train", ["--eval_step_size=-0.01"], "eval_step_size", "must be in (0, inf)"),
    ("train", ["--steps=0"], "steps", "must be a positive integer"),
    ("train", ["--eval_steps=-1"], "eval_steps", "must be a positive integer"),
    ("train", ["--batch_size=0"], "batch_size", "must be a positive integer"),
    ("train", ["--train_steps=0"], "train_steps", "must be a positive integer"),
    ("train", ["--eval_every=0"], "eval_every", "must be a positive integer"),
    ("train", ["--eval_examples=0"], "eval_examples", "must be a positive integer"),
    ("train", ["--final_eval_examples=0"], "final_eval_examples", "must be a positive integer"),
    ("train", ["--eval_batch_size=0"], "eval_batch_size", "must be a positive integer"),
    ("train", ["--checkpoint_every=0"], "checkpoint_every", "must be a positive integer"),
    ("train", ["--keep_checkpoints=0"], "keep_checkpoints", "must be a positive integer"),
    ("train", ["--pool_multiplier=0"], "pool_multiplier", "must be a positive integer"),
    ("train", ["--bank_size=0"], "bank_size", "must be a positive integer"),
    ("train", ["--eps_warmup_steps=-1"], "eps_warmup_steps", "must be a non-negative integer"),
    ("train", ["--seed=-1"], "seed", "must be an integer in the range [0, 4294967295]"),
    ("train", ["--wrn_width=0"], "wrn_width", "must be a positive integer"),
    ("train", ["--model=wide_resnet", "--wrn_depth=12"], "wrn_depth", "must be 6n+4"),
    (
        "train",
        ["--lr_boundaries=100,50", "--lr_values=0.1,0.01,0.001"],
        "lr_boundaries",
        "strictly increasing",
    ),
    (
        "train",
        ["--lr_boundaries=100,100", "--lr_values=0.1,0.01,0.001"],
        "lr_boundaries",
        "strictly increasing",
    ),
    ("train", ["--lr_boundaries=1.5", "--lr_values=0.1,0.01"], "lr_boundaries", "whole numbers"),
    (
        "train",
        ["--lr_boundaries=0", "--lr_values=0.1,0.01"],
        "lr_boundaries",
        "must be in [1, inf)",
    ),
    ("train", ["--lr_boundaries=100", "--lr_values=0.1"], "lr_values", "one more entry"),
    ("train", ["--lr_boundaries=100,200", "--lr_values=0.1,0.01"], "lr_values", "one more entry"),
    ("train", ["--lr_boundaries=100"], "lr_boundaries", "needs lr_values"),
    ("train", ["--lr_boundaries=100", "--lr_values=0.1,-0.01"], "lr_values", "(0, inf)"),
    ("train", ["--lr_boundaries=100", "--lr_values=0.1,x"], "lr_values", "numbers or fractions"),
    ("evaluate", ["--eps=1.5"], "eps", "must be in [0, 1]"),
    ("evaluate", ["--step_size=0"], "step_size", "must be in (0, inf)"),
    ("evaluate", ["--large_eps=0"], "large_eps", "must be in (0, 1]"),
    ("evaluate", ["--steps=0"], "steps", "must be a positive integer"),
    ("evaluate", ["--restarts=0"], "restarts", "must be a positive integer"),
    ("evaluate", ["--num_examples=0"], "num_examples", "must be a positive integer"),
    ("evaluate", ["--batch_size=-4"], "batch_size", "must be a positive integer"),
    ("evaluate", ["--seed=-3"], "seed", "must be an integer in the range"),
    ("evaluate", ["--detection_k=0"], "detection_k", "must be a positive integer"),
    ("evaluate", ["--detection_reference=0"], "detection_reference", "positive integer"),
    ("evaluate", ["--suite_steps=0"], "suite_steps", "must be a positive integer"),
    ("evaluate", ["--suite_queries=0"], "suite_queries", "must be a positive integer"),
    ("evaluate", ["--eps_sweep=0,8/255,2"], "eps_sweep", "items must be in [0, 1]"),
    ("evaluate", ["--steps_sweep=1,2.5"], "steps_sweep", "whole numbers"),
    ("evaluate", ["--steps_sweep=0,10"], "steps_sweep", "items must be in [1, inf)"),
    ("evaluate", ["--detection_eps=0.3,-0.1"], "detection_eps", "items must be in [0, 1]"),
    ("evaluate", ["--dataset=imagenet21k"], "dataset", "unknown --dataset"),
    ("export", ["--version=0"], "version", "must be a positive integer"),
    ("export", ["--detection_k=0"], "detection_k", "must be a positive integer"),
    ("export", ["--detection_reference=-1"], "detection_reference", "must be a positive integer"),
]


def _run(entry_point, model_dir, extra, env=None):
    flagfile = ["--flagfile=configs/mnist5k.flags"] if entry_point == "train" else []
    env = env or {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    return support.run(
        f"bin/{entry_point}", *flagfile, f"--model_dir={model_dir}", *extra, env=env, timeout=120
    )


@pytest.mark.parametrize("row", BAD_VALUES, ids=[f"{r[0]}:{' '.join(r[1])}" for r in BAD_VALUES])
def test_bad_flags_fail_in_one_line_naming_the_flag(tmp_path, row, env_without_tensorflow):
    entry_point, extra, flag, text, *tf_config = row
    # bin/train gets a new folder (it must stay unwritten); the others an existing run folder.
    model_dir = tmp_path / "run" if entry_point == "train" else tmp_path
    # Refused before TensorFlow is imported: importing it would fail the command.
    env = dict(env_without_tensorflow, **({"TF_CONFIG": tf_config[0]} if tf_config else {}))
    result = _run(entry_point, model_dir, extra, env)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert lines[0].startswith("error: ") and text in lines[0], lines
    assert flag is None or f"--{flag}" in lines[0], lines
    if entry_point == "train":
        assert not model_dir.exists()
    else:
        assert os.listdir(tmp_path) == []


_PARSE = """
import sys
from absl import flags
from tf_metric_robust import cli
getattr(cli, "define_" + sys.argv[1] + "_flags")()
flags.FLAGS(sys.argv[1:])
{body}
"""


def _python(entry_point, body, *args):
    result = support.run_python(_PARSE.format(body=body), entry_point, *args, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_fractions_work_for_every_float_flag():
    """bin/train accepts 8/255 like bin/evaluate (was: 'could not convert string to float')."""
    out = _python(
        "train",
        "c = cli.recipe_config(); o, t, a, e = c.optimizer, c.triplet, c.attack, c.eval_attack\n"
        "print(a.eps, a.step_size, e.eps, e.step_size, o.learning_rate, o.lr_values, "
        "t.margin, t.lambda_norm, o.momentum)",
        "--flagfile=configs/mnist5k.flags",
        "--model_dir=unused",
        "--eps=8/255",
        "--step_size=2/255",
        "--eval_eps=8/255",
        "--eval_step_size=1/255",
        "--learning_rate=1/10",
        "--lr_boundaries=5",
        "--lr_values=1/10,1e-2",
        "--margin=3/100",
        "--lambda_norm=1/1000",
        "--momentum=9/10",
    )
    values = [float(v.strip("(),")) for v in out.split()]
    np.testing.assert_allclose(
        values, [8 / 255, 2 / 255, 8 / 255, 1 / 255, 0.1, 0.1, 0.01, 0.03, 0.001, 0.9]
    )
    out = _python(
        "evaluate",
        "F = flags.FLAGS; print(F.eps, F.step_size, F.large_eps)",
        "--eps=8/255",
        "--step_size=1/255",
        "--large_eps=1/2",
    )
    np.testing.assert_allclose([float(v) for v in out.split()], [8 / 255, 1 / 255, 0.5])


@pytest.mark.parametrize("entry_point", ["train", "evaluate", "export"])
def test_help_shows_a_range_for_every_numeric_flag(entry_point):
    """Each int/float flag of the entry point carries bounds, which --help prints after it."""
    out = _python(
        entry_point,
        """
for flag in cli.our_flags():
    parser = flag.parser
    if isinstance(parser, cli.NumberParser):
        ok = parser.valid != cli.common.cfg.Range()
    elif isinstance(parser, flags.FloatParser):  # a float flag without cli.define_number
        ok = False
    elif isinstance(parser, flags.IntegerParser):
        ok = parser.lower_bound is not None
    else:
        continue
    print(flag.name, ok, parser.syntactic_help.replace(" ", "_"))
""",
    )
    rows = [line.split() for line in out.splitlines()]
    assert rows and all(ok == "True" for _, ok, _ in rows), [r for r in rows if r[1] != "True"]
    help_text = support.run(f"bin/{entry_point}", "--helpshort", timeout=120).stdout
    help_text = " ".join(help_text.split())  # absl wraps long lines
    for name, _, syntactic_help in rows:
        assert f"--{name}:" in help_text and syntactic_help.replace("_", " ") in help_text, name


def _write_image_folder(root, per_class):
    import PIL.Image

    for split, count in (("train", per_class), ("test", 2)):
        for label in ("a", "b"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = np.full((8, 8, 3), 20 * i + (100 if label == "b" else 0), np.uint8)
                PIL.Image.fromarray(pixels).save(folder / f"{i}.png")


def test_image_folder_smaller_than_one_step_is_one_line(tmp_path):
    """The extra pool makes a step read batch x (1 + pool_multiplier) examples: say so, write
    nothing (was: a traceback ending in 'batch_size 550 exceeds the 100 examples')."""
    _write_image_folder(tmp_path / "images", per_class=5)
    model_dir = tmp_path / "run"
    result = support.run(
        "bin/train",
        "--flagfile=configs/mnist5k.flags",
        f"--dataset=image_folder:{tmp_path / 'images'}",
        f"--model_dir={model_dir}",
        "--mode=tla",
        "--negative_pool=extra",
        "--pool_multiplier=10",
        "--batch_size=4",
    )
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert len(lines) == 1, result.stderr[-3000:]
    assert "10 training examples" in lines[0], lines[0]
    assert "--batch_size 4 x (1 + --pool_multiplier 10) = 44" in lines[0], lines[0]
    assert "lower --batch_size or --pool_multiplier" in lines[0], lines[0]
    assert not model_dir.exists()


_DECLARED = """
import dataclasses, json, sys
from absl import flags
from tf_metric_robust import cli, config as cfg

def declared(config_class, defaults=None, prefix="", without=()):
    for field in dataclasses.fields(config_class):
        if field.name in without:
            continue
        default = getattr(defaults, field.name) if defaults is not None else field.default
        if "prefix" in field.metadata:
            yield from declared(type(default), default, prefix + field.metadata["prefix"],
                                field.metadata["without"])
        elif "help" in field.metadata:
            choices = field.metadata["choices"]
            yield prefix + cfg.flag_name(field), default, list(choices) if choices else None

getattr(cli, "define_" + sys.argv[1] + "_flags")()
classes = {"train": [cfg.TrainConfig, cfg.WideResNetShape], "evaluate": [cfg.EvaluateRun],
           "export": [cfg.ExportConfig], "compare": [cfg.TrainConfig, cfg.WideResNetShape,
           cfg.CompareConfig]}[sys.argv[1]]
expected = {name: (d, c) for k in classes for name, d, c in declared(k)}
out = {}
for flag in cli.our_flags():
    default = flag.default
    if isinstance(default, list):  # list flags hold text; the config holds numbers or names
        default = [str(v) for v in default]
    out[flag.name] = [default, getattr(flag.parser, "enum_values", None)]
print(json.dumps({"flags": out, "declared": {n: [list(d) if isinstance(d, tuple) else d, c]
                  for n, (d, c) in expected.items()}}, default=str))
"""


@pytest.mark.parametrize("entry_point", ["train", "evaluate", "export", "compare"])
def test_every_flag_is_a_declared_setting_with_its_default_and_choices(entry_point):
    """Each flag of an entry point is a config field's declaration: the same default (a list
    flag's items as text), the same choices for an enum flag, and no flag without a field."""
    result = support.run_python(_DECLARED, entry_point, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    flags_, declared = report["flags"], report["declared"]
    assert set(flags_) == set(declared)
    for name, (default, choices) in flags_.items():
        want, want_choices = declared[name]
        if isinstance(want, list):
            want = [f"{v:g}" if isinstance(v, float) else str(v) for v in want]
        assert default == want, name
        assert choices == want_choices, name
