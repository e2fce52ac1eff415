"""What a training run records of its flags: the result-changing settings (recipe.json, checked
on resume) and --allow_changes, which names the settings a resume may change."""

from tf_metric_robust import config as cfg
from tf_metric_robust.cli.common import FLAGS, UsageError, our_flags

# Flags of bin/train that do not change results: the TrainConfig fields of the same names (where
# the run reads and writes, how often it checkpoints or evaluates on the side, on which hardware it
# runs) and --allow_changes. Every other flag of bin/train is part of the recipe (recipe.json):
# a resume must match it unless --allow_changes names it (docs/training.md, "Resuming and extending a run").
NOT_IN_RECIPE = tuple(name for name in cfg.OPERATIONAL_FIELDS if name != "settings")


def _plain_value(value):
    """A flag value as JSON; list items as numbers where they are numbers ('1e-4' == '0.0001')."""
    if isinstance(value, (list, tuple)):
        items = []
        for item in value:
            try:
                items.append(float(item))
            except (TypeError, ValueError):
                items.append(item)
        return items
    return value


def recipe_settings():
    """{flag name: value} of every result-changing flag of bin/train (not in NOT_IN_RECIPE)."""
    return {
        flag.name: _plain_value(flag.value)
        for flag in our_flags()
        if flag.name not in NOT_IN_RECIPE
    }


def allowed_changes():
    names = tuple(name.strip().lstrip("-") for name in FLAGS.allow_changes if name.strip())
    known = recipe_settings()
    for name in names:
        if name not in known:
            hint = (
                "it does not change results: no need to allow it"
                if name in NOT_IN_RECIPE
                else "not a flag of bin/train"
            )
            raise UsageError(f"--allow_changes: {name!r} is not a result-changing flag ({hint})")
    return names
