#!/usr/bin/env python3
"""Our AutoAttack against the reference implementation (fra31/auto-attack) on the same weights.

    tools/autoattack_conformance.py --model_dir=runs/mnist5k [--num_examples=1000] [--eps=0.3]
        [--steps=100] [--queries=5000] [--batch_size=500] [--seed=0] [--output=result.json]

Both sides attack the first --num_examples test images of the run's dataset (the images
`bin/evaluate --num_examples=N --suite=autoattack` evaluates) at the same L-inf eps (default: the
dataset's, as bin/evaluate's). Ours: attacks.autoattack 'standard' (what the suite runs) on the
run's network in TensorFlow (its weight EMA if it has one, as bin/evaluate). The reference:
AutoAttack 'standard' (APGD-CE, APGD-T, FAB-T, Square) on the run's ONNX export (the newest
version under <model_dir>/onnx, from `bin/export --format=onnx`) converted to PyTorch by
onnx2torch; its logits are checked against ours before anything is attacked. --steps (APGD-CE,
APGD-T and FAB-T iterations) and --queries (Square) change both sides equally. Prints the clean
and robust accuracies of both, and which examples one side left robust and the other did not.

Needs the conformance extra (pip install -e '.[conformance]': a CPU PyTorch and onnx2torch) and
the reference, which is not on the package index: pip install
git+https://github.com/fra31/auto-attack (network), or from a checkout of that repository (git
clone it, then pip install --no-deps ./auto-attack), or pass the checkout as --autoattack_path.
The measured agreement on the demo model is in docs/results.md.
"""

import argparse
import json
import os
import sys
import time
import types

ROOT = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
LOGIT_TOLERANCE = 1e-4  # max abs difference of the PyTorch model's logits from ours


def _import_onnx2torch():
    """onnx2torch, importable beside a torchvision built for another torch.

    onnx2torch imports torchvision for its NonMaxSuppression and RoiAlign converters only, which
    no classifier graph uses. The torchvision wheels of the package index are CUDA builds that
    fail to import beside a CPU torch ("operator torchvision::nms does not exist"); then those two
    converters get stand-ins that raise, and every other converter works.
    """
    try:
        import torchvision  # noqa: F401
    except (ImportError, OSError, RuntimeError) as error:
        reason = f"torchvision does not import here ({error}); ONNX NonMaxSuppression/RoiAlign"

        def unavailable(*args, **kwargs):
            raise NotImplementedError(reason)

        ops = types.ModuleType("torchvision.ops")
        ops.nms = ops.roi_align = ops.box_convert = unavailable
        stand_in = types.ModuleType("torchvision")
        stand_in.ops = ops
        sys.modules.update({"torchvision": stand_in, "torchvision.ops": ops})
    import onnx2torch

    return onnx2torch


def torch_classifier(onnx_path):
    """torch.nn.Module mapping NCHW float images in [0, 1] to logits: the ONNX graph pruned to
    its `logits` output (the detector's Loop is not needed) and converted by onnx2torch, behind
    an NCHW -> NHWC transpose (the reference AutoAttack's images are NCHW, ours NHWC)."""
    import onnx
    import torch

    onnx2torch = _import_onnx2torch()
    model = onnx.load(onnx_path)
    logits_only = onnx.utils.Extractor(model).extract_model(["images"], ["logits"])
    network = onnx2torch.convert(logits_only)

    class Classifier(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.network = network

        def forward(self, images):
            return self.network(images.permute(0, 2, 3, 1))

    return Classifier().eval()


def newest_onnx(model_dir):
    """<model_dir>/onnx/<largest version>/model.onnx, or SystemExit saying how to make one."""
    from tf_metric_robust import export

    base = os.path.join(model_dir, "onnx")
    for version in reversed(export.versions(base)):
        path = os.path.join(base, str(version), export.ONNX_FILE)
        if os.path.exists(path):
            return path
    raise SystemExit(
        f"no ONNX export under {base}: run bin/export --model_dir={model_dir} --format=onnx"
    )


def reference_autoattack(model, x, y, *, eps, steps, queries, batch_size, seed, path=None):
    """Robust flags [N] (bool) and accuracy after each attack of the reference AutoAttack
    'standard' (L-inf) on NCHW torch tensors; `steps` and `queries` set as its constructor
    would set them (APGD's step-size checkpoints follow n_iter there)."""
    if path:
        sys.path.insert(0, path)
    try:
        from autoattack import AutoAttack
    except ImportError:
        raise SystemExit(
            "the reference AutoAttack is not installed: pip install "
            "git+https://github.com/fra31/auto-attack, or pip install --no-deps a checkout of "
            "it, or pass --autoattack_path=<checkout>"
        ) from None
    adversary = AutoAttack(model, norm="Linf", eps=eps, version="standard", device="cpu", seed=seed)
    for apgd in (adversary.apgd, adversary.apgd_targeted):
        # autopgd_base.APGDAttack.__init__'s schedule for n_iter iterations.
        apgd.n_iter = apgd.n_iter_orig = steps
        apgd.n_iter_2 = max(int(0.22 * steps), 1)
        apgd.n_iter_min = max(int(0.06 * steps), 1)
        apgd.size_decr = max(int(0.03 * steps), 1)
    adversary.fab.n_iter = steps
    adversary.square.n_queries = queries
    _, y_adv = adversary.run_standard_evaluation(x, y, bs=batch_size, return_labels=True)
    return (y_adv == y).numpy()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_dir", required=True, help="a bin/train run with an ONNX export")
    parser.add_argument("--onnx", help="the ONNX model (default: the run's newest ONNX export)")
    parser.add_argument("--num_examples", type=int, default=1000)
    parser.add_argument("--eps", type=float, help="L-inf radius (default: the dataset's)")
    parser.add_argument("--steps", type=int, default=100, help="APGD and FAB-T iterations")
    parser.add_argument("--queries", type=int, default=5000, help="Square queries")
    parser.add_argument("--batch_size", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data_dir", help="tensorflow-datasets data directory")
    parser.add_argument("--autoattack_path", help="a checkout of fra31/auto-attack")
    parser.add_argument("--output", help="write the result as JSON here too")
    args = parser.parse_args(argv)

    sys.path.insert(0, ROOT)
    import numpy as np
    import torch

    from tf_metric_robust import data, run_folder
    from tf_metric_robust.attacks import autoattack  # the function (attacks/autoattack.py)
    from tf_metric_robust.config.evaluation import dataset_defaults

    onnx_path = args.onnx or newest_onnx(args.model_dir)
    network, recipe, checkpoint = run_folder.load_network(args.model_dir)
    dataset = recipe["dataset"]
    eps = args.eps if args.eps is not None else dataset_defaults(dataset)["eps"]
    batches = data.eval_dataset(
        dataset, batch_size=500, num_examples=args.num_examples, data_dir=args.data_dir
    )
    pairs = list(batches.as_numpy_iterator())
    x = np.concatenate([images for images, _ in pairs])
    y = np.concatenate([labels for _, labels in pairs])
    print(f"{checkpoint}\n{onnx_path}\n{dataset}: {len(y)} test images, L-inf eps {eps}")
    print(
        f"steps {args.steps} (APGD-CE, APGD-T, FAB-T), queries {args.queries} (Square), both sides"
    )

    torch.manual_seed(args.seed)
    model = torch_classifier(onnx_path)
    x_torch = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    y_torch = torch.from_numpy(y.astype(np.int64))

    def logits_fn(images):
        return network(images, training=False)["logits"]

    ours_logits = np.concatenate(
        [logits_fn(x[i : i + args.batch_size]).numpy() for i in range(0, len(x), args.batch_size)]
    )
    with torch.no_grad():
        torch_logits = np.concatenate(
            [
                model(x_torch[i : i + args.batch_size]).numpy()
                for i in range(0, len(x), args.batch_size)
            ]
        )
    logit_difference = float(np.abs(torch_logits - ours_logits).max())
    print(f"logits, ONNX -> PyTorch vs ours: max abs difference {logit_difference:.2e}")
    if logit_difference > LOGIT_TOLERANCE:
        raise SystemExit(f"not the same model: logits differ by more than {LOGIT_TOLERANCE}")

    start = time.time()
    ours = autoattack(
        logits_fn,
        x,
        y,
        eps=eps,
        version="standard",
        seed=args.seed,
        batch_size=args.batch_size,
        steps=args.steps,
        queries=args.queries,
    )
    ours_seconds = time.time() - start
    ours_robust = ours.fooled_by == ""
    start = time.time()
    reference_robust = reference_autoattack(
        model,
        x_torch,
        y_torch,
        eps=eps,
        steps=args.steps,
        queries=args.queries,
        batch_size=args.batch_size,
        seed=args.seed,
        path=args.autoattack_path,
    )
    reference_seconds = time.time() - start

    only_ours = np.flatnonzero(ours_robust & ~reference_robust)
    only_reference = np.flatnonzero(~ours_robust & reference_robust)
    result = {
        "checkpoint": checkpoint,
        "onnx": onnx_path,
        "dataset": dataset,
        "num_examples": int(len(y)),
        "eps": eps,
        "steps": args.steps,
        "queries": args.queries,
        "seed": args.seed,
        "logit_max_abs_difference": logit_difference,
        "clean_accuracy": {
            "ours": float(np.mean(ours_logits.argmax(1) == y)),
            "reference": float(np.mean(torch_logits.argmax(1) == y)),
        },
        "robust_accuracy": {
            "ours": float(np.mean(ours_robust)),
            "reference": float(np.mean(reference_robust)),
        },
        "ours_after_each_attack": ours.attack_accuracy,
        "agreement": float(np.mean(ours_robust == reference_robust)),
        "robust_only_for_ours": only_ours.tolist(),
        "robust_only_for_the_reference": only_reference.tolist(),
        "seconds": {"ours": round(ours_seconds, 1), "reference": round(reference_seconds, 1)},
    }
    print(
        f"robust accuracy: ours {result['robust_accuracy']['ours']:.4f}, reference "
        f"{result['robust_accuracy']['reference']:.4f}; same verdict on "
        f"{np.sum(ours_robust == reference_robust)}/{len(y)} examples; robust only for ours "
        f"{len(only_ours)} {only_ours.tolist()[:20]}, only for the reference "
        f"{len(only_reference)} {only_reference.tolist()[:20]}"
    )
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
