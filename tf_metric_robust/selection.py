"""Best-checkpoint selection on a validation split held out of the TRAINING set (--select_best).

The TLA authors kept the checkpoint with the best PGD-20 accuracy on the first 500 TEST images
(train_update_fast_triplet.py:776-789 with learning/eval_within_train.py:46-49), which selects on
the test set; we select on examples held out of the training split (data.validation_split) and
report test accuracy of the selected network only.
"""

import json
import os

import tensorflow as tf

from tf_metric_robust import run_files

BEST_DIR = "best_checkpoint"
RECORD = "best.json"


class BestCheckpoint:
    """Keeps, beside the latest checkpoints, the network with the highest validation PGD accuracy.

    Args:
      directory: where the best checkpoint and best.json go (model_dir/best_checkpoint).
      network: the Keras network whose weights are saved.
      validation_data: evaluation batches of the held-out validation split.
    """

    def __init__(self, directory, network, validation_data):
        self.directory = directory
        self.validation_data = validation_data
        self.manager = tf.train.CheckpointManager(
            tf.train.Checkpoint(network=network), directory, max_to_keep=1
        )
        self.record = read_record(directory)

    def consider(self, trainer, step):
        """Evaluates the trainer's eval attack on the validation split; saves if best so far.

        Returns the record {'step', 'validation_pgd_accuracy', 'validation_clean_accuracy',
        'validation_examples'} of the best checkpoint, plus 'last_pgd_accuracy' (this one's).
        """
        results = trainer.evaluate(self.validation_data, return_dict=True, verbose=0)
        accuracy = float(results["pgd_accuracy"])
        best = self.record["validation_pgd_accuracy"] if self.record else -1.0
        if accuracy > best:
            self.manager.save(checkpoint_number=step)
            self.record = {
                "step": int(step),
                "validation_pgd_accuracy": accuracy,
                "validation_clean_accuracy": float(results["clean_accuracy"]),
                "validation_examples": int(trainer.trackers["clean_accuracy"].count.numpy()),
            }
            run_files.write_json_atomic(os.path.join(self.directory, RECORD), self.record)
        return {**self.record, "last_pgd_accuracy": accuracy}


def read_record(directory):
    """best.json of a best-checkpoint folder, or None."""
    path = os.path.join(directory, RECORD)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def restore_best(model_dir, network):
    """Loads the selected weights into `network`; returns their record, or None if none saved."""
    directory = os.path.join(model_dir, BEST_DIR)
    latest = tf.train.latest_checkpoint(directory)
    record = read_record(directory)
    if latest is None or record is None:
        return None
    tf.train.Checkpoint(network=network).restore(latest).expect_partial()
    return record
