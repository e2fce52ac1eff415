"""bin/convert_checkpoint's settings: a Madry-style TF1 CIFAR-10 WideResNet checkpoint (MadryLab/
cifar10_challenge model.py names) written as a run folder that --init_checkpoint restores."""

import dataclasses

from tf_metric_robust.config.common import UserError, check_settings, setting


@dataclasses.dataclass(frozen=True)
class ConvertConfig:
    """Where Madry's checkpoint is and where the converted network goes."""

    source: str = setting(
        None,
        "Madry's TF1 checkpoint: its folder (e.g. models/adv_trained from cifar10_challenge's "
        "fetch_model.py adv_trained) or a checkpoint prefix.",
    )
    model_dir: str = setting(
        None,
        "Output folder: the network goes to <model_dir>/checkpoints/; pass it to bin/train "
        "--init_checkpoint.",
    )

    def __post_init__(self):
        check_settings(self)
        for name in ("source", "model_dir"):
            if not getattr(self, name):
                raise UserError(f"--{name} is required")
