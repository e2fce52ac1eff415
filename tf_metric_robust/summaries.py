"""TensorBoard output of a run: train/eval scalars, clean-vs-adversarial images, projector data."""

import os

import keras
import numpy as np
import tensorflow as tf

from tf_metric_robust import attacks


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
    """Writes the train metrics (loss, ce_loss, triplet_loss, accuracies...) every `every` steps."""

    def __init__(self, writer, every=50):
        super().__init__()
        self.writer, self.every = writer, every

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        if logs and step % self.every == 0:
            values = dict(logs)
            learning_rate = self.model.optimizer.learning_rate
            values["learning_rate"] = float(keras.ops.convert_to_numpy(learning_rate))
            self.writer.scalars("train", values, step)


def _grid(rows):
    """[R, N, H, W, C] -> one [1, R*H, N*W, C] image."""
    rows = np.concatenate([np.concatenate(list(row), axis=1) for row in rows], axis=0)
    return rows[None]


def log_adversarial_grid(writer, trainer, dataset, step, count=8):
    """Clean test images, their eval-PGD versions and the perturbation (x10), as one image."""
    images, labels = next(iter(dataset))
    images, labels = images[:count], tf.cast(labels[:count], tf.int64)
    attack = trainer.eval_attack or trainer.attack
    adversarial = attacks.pgd(trainer.logits_fn, images, labels, **attack.kwargs())
    perturbation = np.clip(0.5 + 10.0 * (adversarial.numpy() - images.numpy()), 0.0, 1.0)
    writer.images("eval/clean_adversarial_perturbation",
                  _grid([images.numpy(), adversarial.numpy(), perturbation]), step,
                  description="rows: clean, PGD adversarial, 0.5 + 10 x perturbation")


def log_projector(logdir, network, dataset, count=500):
    """Embeddings of `count` test images for the TensorBoard projector (with label metadata)."""
    from tensorboard.plugins import projector

    embeddings, labels = [], []
    for images, batch_labels in dataset:
        embeddings.append(network(images, training=False)["embedding"].numpy())
        labels.append(batch_labels.numpy())
        if sum(len(e) for e in embeddings) >= count:
            break
    embeddings = np.concatenate(embeddings)[:count].astype(np.float32)
    labels = np.concatenate(labels)[:count]
    directory = os.path.join(logdir, "projector")
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "metadata.tsv"), "w") as f:
        f.writelines(f"{label}\n" for label in labels)
    variable = tf.Variable(embeddings, name="test_embedding")
    tf.train.Checkpoint(embedding=variable).save(os.path.join(directory, "embedding.ckpt"))
    config = projector.ProjectorConfig()
    entry = config.embeddings.add()
    entry.tensor_name = "embedding/.ATTRIBUTES/VARIABLE_VALUE"
    entry.metadata_path = "metadata.tsv"
    projector.visualize_embeddings(directory, config)
