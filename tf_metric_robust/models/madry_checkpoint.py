"""Madry's TF1 CIFAR-10 WideResNet checkpoint (MadryLab/cifar10_challenge model.py) as our
`wide_resnet`, so the released adversarially trained model can start a run (--init_checkpoint).

Madry's variable names (model.py): the stem `input/init_conv/DW` (lines 31-42); per unit
`unit_<stage>_<i>/` with `shared_activation/` (unit_1_0) or `residual_only_activation/` holding
the first batch norm (lines 115-124), `sub1/conv1/DW` and `sub2/` with the second batch norm and
`sub2/conv2/DW` (lines 126-132); `unit_last/` the final batch norm (lines 78-81); `logit/DW` and
`logit/biases` (lines 83-84, 174-178). tf.contrib.layers.batch_norm under tf.name_scope (lines
100-110) names its variables `<variable scope>/BatchNorm/{gamma,beta,moving_mean,moving_variance}`.
The TLA authors' copy carries a `main_encoder/` prefix (utils_folder/rename_checkpoint.py); any
common prefix is accepted. Optimizer slots and global_step are ignored.

Input scale: Madry feeds [0, 255] pixels and standardises each image (model.py:40-41), we feed
[0, 1]. per_image_standardization(255 x) = (x - mean) / max(std, 1 / (255 sqrt(N))) while ours
is (x - mean) / max(std, 1 / sqrt(N)) on x in [0, 1], N = 32*32*3: the two are equal, and so
are the logits, for every image whose pixel std is at least 1/sqrt(3072) ~ 0.018 (4.6 of 255
levels); only nearly constant images differ.
"""

import os
import re

import numpy as np
import tensorflow as tf

from tf_metric_robust.models.wide_resnet import wide_resnet

_STEM = "input/init_conv/DW"
_BN = ("gamma", "beta", "moving_mean", "moving_variance")  # Keras BatchNormalization's order


def _batch_norm(scope):
    return [f"{scope}/BatchNorm/{name}" for name in _BN]


def variable_names(units):
    """Our layer name -> Madry's variable names, in the order of the layer's weights."""
    names = {"init_conv": [_STEM]}
    for stage in (1, 2, 3):
        for i in range(units):
            unit = f"unit_{stage}_{i}"
            first = "shared_activation" if (stage, i) == (1, 0) else "residual_only_activation"
            names[f"{unit}_bn1"] = _batch_norm(f"{unit}/{first}")
            names[f"{unit}_conv1"] = [f"{unit}/sub1/conv1/DW"]
            names[f"{unit}_bn2"] = _batch_norm(f"{unit}/sub2")
            names[f"{unit}_conv2"] = [f"{unit}/sub2/conv2/DW"]
    names["final_bn"] = _batch_norm("unit_last")
    names["logits"] = ["logit/DW", "logit/biases"]
    return names


def checkpoint_prefix(source):
    """The checkpoint prefix of `source`: a directory (its latest checkpoint) or a prefix."""
    if os.path.isdir(source):
        latest = tf.train.latest_checkpoint(source)
        if latest is None:
            raise ValueError(f"{source}: no TF checkpoint (no 'checkpoint' state file)")
        return latest
    return source


def load(source):
    """Our `wide_resnet` with the weights of Madry's checkpoint `source` (a prefix or a folder).

    Depth, width and classes are read from the variables' shapes (Madry's release: WRN-34-10).
    ValueError if a variable is missing or has another shape than our layer's weight.
    """
    try:
        reader = tf.train.load_checkpoint(checkpoint_prefix(source))
    except (tf.errors.NotFoundError, tf.errors.DataLossError) as error:
        raise ValueError(f"{source}: no readable checkpoint ({error.message})") from None
    shapes = reader.get_variable_to_shape_map()
    stems = [name for name in shapes if name.endswith(_STEM)]
    if len(stems) != 1:
        raise ValueError(f"{source}: not a Madry WideResNet checkpoint (no variable {_STEM})")
    scope = stems[0][: -len(_STEM)]  # '' or e.g. 'main_encoder/'
    stage_one = {
        match.group(1)
        for name in shapes
        if (match := re.fullmatch(re.escape(scope) + r"unit_1_(\d+)/.*", name))
    }
    units = len(stage_one)
    width = shapes[f"{scope}unit_1_0/sub1/conv1/DW"][-1] // 16
    num_classes = shapes[f"{scope}logit/DW"][-1]
    model = wide_resnet(num_classes, (32, 32, 3), depth=6 * units + 4, width=width)
    for layer, names in variable_names(units).items():
        values = []
        for name, weight in zip(names, model.get_layer(layer).weights):
            if scope + name not in shapes:
                raise ValueError(f"{source}: missing variable {scope + name}")
            value = reader.get_tensor(scope + name)
            if tuple(value.shape) != tuple(weight.shape):
                raise ValueError(
                    f"{source}: {scope + name} has shape {value.shape}, our {layer} needs "
                    f"{tuple(weight.shape)}"
                )
            values.append(np.asarray(value, np.float32))
        model.get_layer(layer).set_weights(values)
    return model


def convert(source, model_dir):
    """Writes Madry's checkpoint `source` as <model_dir>/checkpoints/ckpt-1 (the network of a
    run), which `bin/train --init_checkpoint=<model_dir>` restores; returns (path, model)."""
    model = load(source)
    manager = tf.train.CheckpointManager(
        tf.train.Checkpoint(network=model), os.path.join(model_dir, "checkpoints"), max_to_keep=1
    )
    return manager.save(checkpoint_number=1), model
