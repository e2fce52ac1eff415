"""bin/train's flags, defined once: data, network, method, optimisation, attacks, TLA, run."""

from absl import flags

from tf_metric_robust import config as cfg
from tf_metric_robust.cli.common import (
    MODELS,
    SEED_RANGE,
    define_attack_flags,
    define_data_flags,
    define_number,
)


def define_train_flags():
    define_data_flags()
    flags.DEFINE_string(
        "model_dir",
        None,
        "Output folder: checkpoints/, tensorboard/, "
        "saved_model/, flags.txt, metrics.json. Re-running resumes.",
    )
    flags.DEFINE_string("model", "small_cnn", f"Network: {', '.join(MODELS)}.")
    flags.DEFINE_integer(
        "wrn_depth", 34, "WideResNet depth, 6n+4 (10, 16, 22, 28, 34, ...).", lower_bound=10
    )
    flags.DEFINE_integer("wrn_width", 10, "WideResNet widening factor.", lower_bound=1)
    flags.DEFINE_enum(
        "mode",
        "tla",
        list(cfg.MODES),
        "natural: CE on clean; pgd: Madry PGD-AT; tla: PGD-AT + triplet loss; "
        "trades: CE(x) + beta KL(p(x)||p(x')), x' maximising the KL (Zhang et al. "
        "2019); mart: boosted CE(x') + beta KL(p(x)||p(x')) (1 - p(x)_y) (Wang et "
        "al. 2020). trades/mart attack from x + 0.001 N(0,1) as their references.",
    )
    define_number(
        "beta",
        6.0,
        "Weight of the KL term of --mode=trades/mart (both references: 6 "
        "on CIFAR-10; TRADES MNIST: 1).",
        cfg.NON_NEGATIVE,
    )
    flags.DEFINE_enum(
        "base",
        "pgd",
        list(cfg.training.BASES),
        "--mode=tla only: pgd adds the "
        "triplet term to CE on x' (the TLA authors); trades adds it to the TRADES "
        "objective and attacks TRADES' KL (ours, not the paper's).",
    )
    define_number(
        "awp_gamma",
        0.0,
        "Adversarial weight perturbation (Wu et al. 2020): relative "
        "size gamma, each kernel moved by gamma x its norm (0: off; reference 5e-3 for "
        "TRADES-AWP on CIFAR-10, 1e-2 for AT-AWP).",
        cfg.Range(0.0, 1.0),
    )
    flags.DEFINE_integer(
        "awp_warmup_steps",
        0,
        "Training steps before AWP starts (the reference: 10 epochs for TRADES-AWP, 0 for AT-AWP).",
        lower_bound=0,
    )
    define_number(
        "ema_decay",
        0.0,
        "Exponential moving average of the weights, evaluated and "
        "exported instead of them (0: off; e.g. 0.999).",
        cfg.UNIT_OPEN,
    )
    # Optimisation.
    flags.DEFINE_integer(
        "batch_size", 50, "Global batch size (split over replicas).", lower_bound=1
    )
    flags.DEFINE_integer("train_steps", 1000, "Total optimizer steps.", lower_bound=1)
    flags.DEFINE_enum("optimizer", "sgd", ["sgd", "adam"], "Optimizer.")
    define_number("learning_rate", 0.1, "Initial learning rate.", cfg.POSITIVE)
    flags.DEFINE_list(
        "lr_boundaries",
        [],
        "Steps where the learning rate changes: strictly "
        "increasing whole numbers >= 1 (needs --lr_values).",
    )
    flags.DEFINE_list(
        "lr_values",
        [],
        "Learning rates, one more than --lr_boundaries, each a "
        "number in (0, inf) (fractions like 1/10 work).",
    )
    define_number("momentum", 0.9, "SGD momentum.", cfg.UNIT_OPEN)
    define_number(
        "weight_decay", 2e-4, "Coefficient of sum(l2_loss(kernel)) (Madry style).", cfg.NON_NEGATIVE
    )
    define_number("label_smoothing", 0.0, "Label smoothing of the CE loss.", cfg.UNIT_OPEN)
    flags.DEFINE_bool("augment", None, "Force data augmentation on/off (default: per dataset).")
    # Training attack (PGD inside the step).
    define_attack_flags("", "Training attack:", 0.3, 0.01, 40)
    flags.DEFINE_integer(
        "eps_warmup_steps",
        0,
        "Grow the training eps and step_size linearly "
        "from 0 over this many steps (0: full eps from the start).",
        lower_bound=0,
    )
    flags.DEFINE_enum(
        "train_attack",
        "pgd",
        ["pgd", "fgsm_rs", "n_fgsm"],
        "Training attack "
        "(pgd, trades, tla, mart): PGD; fgsm_rs: FGSM from a uniform start, step "
        "1.25 eps, projected (Wong et al. 2020); n_fgsm: noise U(-2 eps, 2 eps), step "
        "eps, no projection to the eps-ball (de Jorge et al. 2022). Fast ones need "
        "--steps=1.",
    )
    flags.DEFINE_integer(
        "overfit_check_every",
        0,
        "Catastrophic-overfitting guard: PGD-5 and "
        "FGSM probe on a fixed batch every this many steps (0: off).",
        lower_bound=0,
    )
    flags.DEFINE_enum(
        "on_overfit",
        "warn",
        ["warn", "restore"],
        "When PGD probe accuracy "
        "collapses while FGSM accuracy climbs: warn, or restore the last good "
        "weights and continue with the training step size x 0.8.",
    )
    define_number(
        "overfit_drop",
        0.2,
        "PGD probe accuracy fall from its best that counts as a collapse (Wong et al.: 0.2).",
        cfg.UNIT,
    )
    # Evaluation attack (test_step, metrics.json).
    define_attack_flags("eval_", "Evaluation attack:", 0.3, 0.01, 100)
    flags.DEFINE_integer(
        "eval_every", 500, "Steps between evaluations and checkpoints.", lower_bound=1
    )
    flags.DEFINE_integer(
        "eval_examples",
        1000,
        "Test examples for periodic evaluation; final "
        "metrics.json uses the whole test split unless --final_eval_examples.",
        lower_bound=1,
    )
    flags.DEFINE_integer(
        "final_eval_examples", None, "Limit of test examples for metrics.json.", lower_bound=1
    )
    flags.DEFINE_integer("eval_batch_size", 200, "Batch size of evaluation.", lower_bound=1)
    # TLA triplet term.
    flags.DEFINE_enum(
        "triplet_mining",
        "paper",
        ["paper", "semihard"],
        "paper: adversarial anchor vs hardest clean negative; semihard: TFA loss.",
    )
    flags.DEFINE_enum(
        "negative_pool",
        "batch",
        ["batch", "bank", "extra"],
        "Where paper mining looks for negatives.",
    )
    flags.DEFINE_integer(
        "pool_multiplier",
        10,
        "Extra clean pool size in batches ('extra'): a "
        "training step reads batch_size x (1 + pool_multiplier) examples.",
        lower_bound=1,
    )
    flags.DEFINE_integer(
        "bank_size", 4096, "Memory bank size in embeddings ('bank').", lower_bound=1
    )
    flags.DEFINE_enum(
        "triplet_positive",
        "own",
        ["own", "other", "both"],
        "Positive: the anchor's clean source, another clean image of its class, or both terms.",
    )
    define_number("margin", 0.03, "Triplet margin alpha (own-source term).", cfg.NON_NEGATIVE)
    define_number(
        "margin_other", None, "Margin of the other-image term (default: margin).", cfg.NON_NEGATIVE
    )
    flags.DEFINE_enum(
        "triplet_distance",
        "abs_cosine",
        ["abs_cosine", "cosine", "l2", "squared_l2"],
        "Distance D.",
    )
    define_number("lambda_triplet", 2.0, "Weight of the triplet term.", cfg.NON_NEGATIVE)
    define_number("lambda_norm", 1e-3, "Weight of the embedding-norm term.", cfg.NON_NEGATIVE)
    # TLA as the authors run it (issue 14).
    flags.DEFINE_bool(
        "separate_bn_passes",
        True,
        "TLA: one forward pass per image batch (clean, "
        "adversarial, negatives, other positives), each with its own batch-norm "
        "statistics, as the authors (train_update_fast_triplet.py:252-273); "
        "--noseparate_bn_passes: one joint pass (faster; the same without BN).",
    )
    define_number(
        "positive_noise",
        0.0,
        "TLA own positive: add uniform noise in [-x, x], "
        "rounded to the 1/255 grid, clipped (authors' CIFAR nat_noise_level 8: 8/255).",
        cfg.UNIT,
    )
    flags.DEFINE_enum(
        "other_positive",
        "batch",
        ["batch", "data"],
        "TLA's 'other' positive: "
        "data = an independent training image of the class (the authors, "
        "train_update_fast_triplet.py:641-645); batch = another image of the class "
        "in the batch, or the image itself if there is none (cheaper).",
    )
    flags.DEFINE_enum(
        "attack_bn_mode",
        "inference",
        ["inference", "train"],
        "Batch-norm mode "
        "of the TRAINING attack: train = batch statistics (Madry's PGD-AT, "
        "cifar10_challenge train.py:41,57); inference = moving statistics (the TLA "
        "authors' TLA attack, train_update_fast_triplet.py:546,611).",
    )
    flags.DEFINE_integer(
        "validation_examples",
        0,
        "Hold the first N training examples out of "
        "training as a validation split (for --select_best); 0: none.",
        lower_bound=0,
    )
    flags.DEFINE_enum(
        "select_best",
        "none",
        ["none", "pgd"],
        "pgd: after each evaluation, "
        "score the evaluation attack on the validation split and keep the best "
        "checkpoint in DIR/best_checkpoint; the final metrics and the export use it "
        "(the authors selected on 500 test images; we never select on the test set).",
    )
    flags.DEFINE_bool(
        "eval_round_to_grid",
        False,
        "Round evaluation adversarial images to the "
        "1/255 pixel grid, as the authors' CIFAR evaluation (pgd_attack.py:285-286).",
    )
    # System.
    flags.DEFINE_enum(
        "strategy",
        "auto",
        ["auto", "one_device", "mirrored", "multi_worker", "tpu"],
        "tf.distribute strategy: auto = MirroredStrategy over the local GPUs, else "
        "TF's default strategy on the CPU; one_device = the first GPU (default "
        "strategy without one); mirrored = all GPUs or all logical CPUs; "
        "multi_worker = TF_CONFIG cluster; tpu.",
    )
    flags.DEFINE_string("tpu", None, "TPU name or address for --strategy=tpu.")
    flags.DEFINE_enum(
        "mixed_precision",
        "none",
        ["none", "mixed_float16", "mixed_bfloat16"],
        "Keras dtype policy (logits and losses stay float32).",
    )
    flags.DEFINE_bool("jit_compile", False, "XLA-compile the train step (slower on CPU).")
    flags.DEFINE_integer(
        "seed", 0, "Seed of data order, augmentation and attack starts.", **SEED_RANGE
    )
    flags.DEFINE_bool(
        "deterministic",
        False,
        "Also pin TF's kernels (tf.config.experimental."
        "enable_op_determinism; needed for bit-identical GPU runs, slower). Seeds "
        "always come from --seed, and a resumed run replays the same batches and "
        "attack starts.",
    )
    flags.DEFINE_integer(
        "checkpoint_every",
        None,
        "Steps between checkpoints (default: --eval_every).",
        lower_bound=1,
    )
    flags.DEFINE_integer("keep_checkpoints", 3, "Checkpoints kept.", lower_bound=1)
    flags.DEFINE_string(
        "init_checkpoint",
        None,
        "Initialise network weights from this checkpoint "
        "(e.g. a PGD-AT run's model_dir) before training.",
    )
    flags.DEFINE_bool("export", True, "Export the SavedModel at the end of training.")
    flags.DEFINE_list(
        "allow_changes",
        [],
        "Settings a resumed run may change, e.g. "
        "train_steps,lr_boundaries,lr_values (without it a resume with other "
        "result-changing flags is refused); changes go to DIR/history.jsonl.",
    )
