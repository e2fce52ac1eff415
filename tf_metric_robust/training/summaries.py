"""TensorBoard output of a run: train/eval scalars, clean-vs-adversarial images, projector data.

Everything is visible from one `tensorboard --logdir DIR/tensorboard`: the training run is the
folder itself, the projector data sits in `projector/` beside an event file of its own (TensorBoard
lists a folder as a run only if it holds events), and every bin/evaluate writes its own run under
`evaluate/`. Metric names say the attack: `eval/pgd40_accuracy` is PGD-40 (`attack_label`).
"""

import io
import math
import os

import keras
import numpy as np
import tensorflow as tf

from tf_metric_robust import attacks

PROJECTOR_DIR = "projector"


def attack_label(attack):
    """'pgd40' for PGD-40 (CE, L-inf), 'fgsm_rs' / 'n_fgsm' for the fast training attacks; '_cw'
    / '_l2' mark the CW loss and the L2 norm."""
    method = getattr(attack, "method", "pgd")
    label = f"pgd{attack.steps}" if method == "pgd" else method
    if attack.loss != "ce":
        label += f"_{attack.loss}"
    if attack.norm != "linf":
        label += f"_{attack.norm}"
    return label


def name_accuracies(values, attack):
    """The trainer's 'pgd_accuracy' renamed after the attack behind it ('pgd40_accuracy')."""
    return {
        (f"{attack_label(attack)}_accuracy" if name == "pgd_accuracy" and attack else name): value
        for name, value in values.items()
    }


class Writer:
    """A tf.summary file writer that takes plain dicts of scalars under a prefix ('train/...')."""

    def __init__(self, logdir):
        self.logdir = logdir
        self._writer = tf.summary.create_file_writer(logdir)

    def scalars(self, prefix, values, step):
        with self._writer.as_default(step=int(step)):
            for name, value in values.items():
                tf.summary.scalar(f"{prefix}/{name}", float(value))
        self._writer.flush()

    def images(self, name, images, step, description=None):
        with self._writer.as_default(step=int(step)):
            tf.summary.image(name, images, max_outputs=1, description=description)
        self._writer.flush()


class TrainScalars(keras.callbacks.Callback):
    """Writes the train metrics (loss, ce_loss, triplet_loss, accuracies...) every `every` steps.

    `attack` (the training attack) names the adversarial accuracy: train/pgd5_accuracy.
    """

    def __init__(self, writer, every=50, attack=None):
        super().__init__()
        self.writer, self.every, self.attack = writer, every, attack

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        if logs and step % self.every == 0:
            values = name_accuracies(dict(logs), self.attack)
            learning_rate = self.model.optimizer.learning_rate
            values["learning_rate"] = float(keras.ops.convert_to_numpy(learning_rate))
            self.writer.scalars("train", values, step)


def perturbation_image(clean, adversarial, eps):
    """0.5 + (x' - x) / (2 eps): the whole L-inf ball [-eps, eps] maps onto [0, 1] (no clipping
    at eps 0.3, where the former 0.5 + 10 (x' - x) saturated)."""
    scale = 0.5 / eps if eps > 0 else 0.5
    return np.clip(0.5 + scale * (adversarial - clean), 0.0, 1.0)


def _grid_figure(rows, row_names, titles):
    """PNG bytes of a grid: one row per entry of `rows` ([N, H, W, C] in [0,1]), titled columns."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    count = len(titles)
    figure = Figure(figsize=(1.3 * count + 0.9, 1.45 * len(rows) + 0.3), dpi=80)
    FigureCanvasAgg(figure)
    for r, (images, name) in enumerate(zip(rows, row_names)):
        for c in range(count):
            axes = figure.add_subplot(len(rows), count, r * count + c + 1)
            image = images[c]
            if image.shape[-1] == 1:
                axes.imshow(image[..., 0], cmap="gray", vmin=0.0, vmax=1.0)
            else:
                axes.imshow(np.clip(image, 0.0, 1.0))
            axes.set_xticks([])
            axes.set_yticks([])
            if r == 0:
                axes.set_title(titles[c], fontsize=8)
            if c == 0:
                axes.set_ylabel(name, fontsize=8)
    figure.tight_layout(pad=0.3)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def log_adversarial_grid(writer, trainer, dataset, step, count=8):
    """Clean test images, their eval-PGD versions and the scaled perturbation, with each
    column's label and the clean and adversarial predictions, as one image."""
    images, labels = next(iter(dataset))
    images, labels = images[:count], tf.cast(labels[:count], tf.int64)
    attack = trainer.eval_attack or trainer.attack
    adversarial = attacks.pgd(trainer.logits_fn, images, labels, **attack.kwargs())
    clean_predictions = tf.argmax(trainer.logits_fn(images), -1).numpy()
    adversarial_predictions = tf.argmax(trainer.logits_fn(adversarial), -1).numpy()
    titles = [
        f"label {y}\nclean {p} / adv {q}"
        for y, p, q in zip(labels.numpy(), clean_predictions, adversarial_predictions)
    ]
    clean, adversarial = images.numpy(), adversarial.numpy()
    name = attack_label(attack).upper()
    png = _grid_figure(
        [clean, adversarial, perturbation_image(clean, adversarial, attack.eps)],
        ["clean", name, f"perturbation\n(±{attack.eps:.3g} → 0..1)"],
        titles,
    )
    writer.images(
        "eval/clean_adversarial_perturbation",
        tf.io.decode_png(png, channels=3)[tf.newaxis],
        step,
        description=f"rows: clean test images, {name} adversarial (eps {attack.eps:.4g}), "
        f"0.5 + perturbation / (2 eps); columns: label, clean and "
        "adversarial prediction",
    )


def sprite(images):
    """A square grid of the images (the projector's sprite), uint8 [S*H, S*W, C]."""
    count, height, width, channels = images.shape
    side = int(math.ceil(math.sqrt(count)))
    sheet = np.ones((side * height, side * width, channels), np.float32)
    for index, image in enumerate(images):
        row, col = divmod(index, side)
        sheet[row * height : (row + 1) * height, col * width : (col + 1) * width] = image
    return (np.clip(sheet, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def log_projector(logdir, network, dataset, count=500, step=0):
    """Embeddings of `count` test images for the TensorBoard projector, in logdir/projector/.

    With metadata (label, prediction) and a sprite of the images; the folder gets an event file
    too, so TensorBoard lists it as a run and the Projector tab finds it from the top logdir.
    """
    from tensorboard.plugins import projector

    embeddings, labels, predictions, images = [], [], [], []
    for batch_images, batch_labels in dataset:
        outputs = network(batch_images, training=False)
        embeddings.append(outputs["embedding"].numpy())
        predictions.append(tf.argmax(outputs["logits"], -1).numpy())
        labels.append(batch_labels.numpy())
        images.append(batch_images.numpy())
        if sum(len(e) for e in embeddings) >= count:
            break
    embeddings = np.concatenate(embeddings)[:count].astype(np.float32)
    labels, predictions = np.concatenate(labels)[:count], np.concatenate(predictions)[:count]
    images = np.concatenate(images)[:count]
    directory = os.path.join(logdir, PROJECTOR_DIR)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "metadata.tsv"), "w") as f:
        f.write("label\tprediction\n")
        f.writelines(f"{label}\t{prediction}\n" for label, prediction in zip(labels, predictions))
    sheet = sprite(images)
    tf.io.write_file(os.path.join(directory, "sprite.png"), tf.io.encode_png(sheet))
    variable = tf.Variable(embeddings, name="test_embedding")
    tf.train.Checkpoint(embedding=variable).save(os.path.join(directory, "embedding.ckpt"))
    config = projector.ProjectorConfig()
    entry = config.embeddings.add()
    entry.tensor_name = "embedding/.ATTRIBUTES/VARIABLE_VALUE"
    entry.metadata_path = "metadata.tsv"
    entry.sprite.image_path = "sprite.png"
    entry.sprite.single_image_dim.extend(list(images.shape[1:3]))
    projector.visualize_embeddings(directory, config)
    writer = tf.summary.create_file_writer(directory)
    with writer.as_default(step=int(step)):
        tf.summary.text(
            "projector/about",
            f"{len(embeddings)} test embeddings (the network's "
            f"penultimate layer) at step {step}, with labels, predictions and a "
            "sprite: open the Projector tab.",
        )
    writer.close()
