"""Group level at the paper's size, extrapolated from measured per-batch and per-epoch times.

The paper's cohort (about 100 participants, about 20 slices each, 10 folds, 100 stage-1 and 50
stage-2 epochs, 224 px, batch 64) takes hours on a CPU, so this script measures on the chosen
device, with the library's own code on a synthetic memory-mapped cohort of that size:

* a stage-1 training step (a DataLoader batch from the memmaps, then the production
  ``train_step``: train augmentation on the device, ResNet18 forward and backward, Adam step;
  channels-last and bf16 autocast on CUDA), timed over ``--batches`` batches after a warm-up;
* inference (``predict_and_embed``: test transform, forward, logits and embeddings);
* one stage-2 epoch (``train_stage2`` on the training participants' embeddings);

and extrapolates the whole cross-validation plus the final model from them: per fold, the
stage-1 epochs over the training slices, the ``update_bn`` pass and the embedding of the
training slices, two inference passes over the test slices (ResNet, then ResNetSWA for logits
and embeddings together) and the stage-2 epochs. Not included: bootstrap statistics,
attribution maps, figures. On a GPU (``--device cuda``) the same script gives the GPU estimate
from GPU-measured times. Writes ``benchmarks/results/group_scale_<device>.json``.

Usage: python benchmarks/group_scale.py [--device cpu] [--participants 100] [--slices 20]
       [--height 58] [--width 78] [--image-size 224] [--batch-size 64] [--batches 3]
       [--folds 10] [--epochs 100] [--qnet-epochs 50] [--workers 0] [--threads N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load_average, peak_rss_gib, report_header, sync, write_result  # noqa: E402

from bids_qnet.models.device import resolve_device  # noqa: E402
from bids_qnet.models.resnet import build_classifier  # noqa: E402
from bids_qnet.training.augment import train_transform  # noqa: E402
from bids_qnet.training.stage1 import (  # noqa: E402
    Stage1Config,
    predict_and_embed,
    prepare_model,
    slice_dataset,
    slice_loader,
    train_step,
)
from bids_qnet.training.stage2 import Stage2Config, train_stage2  # noqa: E402


def cohort(folder: Path, args) -> list[np.ndarray]:
    """Write the synthetic slice stacks; return them memory-mapped."""
    rng = np.random.default_rng(args.seed)
    stacks = []
    for p in range(args.participants):
        path = folder / f"sub-{p:03d}_slices.npy"
        data = rng.uniform(0, 1, (args.slices, 3, args.height, args.width)).astype(np.float32)
        np.save(path, data)
        stacks.append(np.load(path, mmap_mode="r"))
    return stacks


def train_step_seconds(stacks, labels, device, args) -> float:
    """Mean seconds of one stage-1 training step: the production ``train_step`` itself."""
    config = Stage1Config(
        batch_size=args.batch_size,
        image_size=args.image_size,
        weights="random",
        device=str(device),
        num_workers=args.workers,
    )
    model = prepare_model(build_classifier(3, 2, "random", 0)[0], device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    augment = train_transform(config.image_size, 3)
    batches = iter(slice_loader(slice_dataset(stacks, labels), config, device, shuffle=True))
    times = []
    for step in range(args.batches + 1):  # the first is a warm-up
        sync(device)
        start = time.perf_counter()
        x, y, *_ = next(batches)
        train_step(model, optimizer, augment, x, y, device, config.amp)
        sync(device)
        if step:
            times.append(time.perf_counter() - start)
    return float(np.mean(times))


def inference_seconds_per_image(stacks, device, args) -> float:
    """Seconds per slice of ``predict_and_embed`` (test transform, one forward pass)."""
    model, _ = build_classifier(3, 2, "random", 0)
    per_stack = args.slices
    n_stacks = max(1, (args.batches * args.batch_size) // per_stack)
    predict_and_embed(model, stacks[:2], args.image_size, args.batch_size, device)  # warm-up
    sync(device)
    start = time.perf_counter()
    predict_and_embed(model, stacks[:n_stacks], args.image_size, args.batch_size, device)
    sync(device)
    return (time.perf_counter() - start) / (n_stacks * per_stack)


def stage2_epoch_seconds(n_train: int, device, args) -> float:
    """Seconds of one stage-2 epoch on ``n_train`` participants' embeddings."""
    rng = np.random.default_rng(args.seed)
    embeddings = [rng.standard_normal((args.slices, 512)).astype(np.float32)] * n_train
    labels = [i % 2 for i in range(n_train)]
    config = Stage2Config(epochs=3, batch_size=args.batch_size, seed=0, device=str(device))
    history = train_stage2(embeddings, labels, 2, config).history
    return float(np.mean([r["seconds"] for r in history[1:]]))  # the first is a warm-up


def extrapolate(step_s: float, infer_s: float, stage2_s: float, args) -> dict:
    """Seconds of the whole cross-validation plus the final model, from the measured parts."""
    p, s, k = args.participants, args.slices, args.folds
    train_fold = round(p * (k - 1) / k) * s
    test_fold = p * s - train_fold
    steps_per_epoch = -(-train_fold // args.batch_size)
    final_steps = -(-(p * s) // args.batch_size)
    stage1 = (k * steps_per_epoch + final_steps) * args.epochs * step_s
    inference = (k * (2 * train_fold + 2 * test_fold) + 2 * p * s) * infer_s
    stage2 = (k + 1) * args.qnet_epochs * stage2_s
    return {
        "stage1_epoch_s": steps_per_epoch * step_s,
        "stage1_training_s": stage1,
        "inference_s": inference,
        "stage2_s": stage2,
        "total_s": stage1 + inference + stage2,
        "total_h": (stage1 + inference + stage2) / 3600,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--participants", type=int, default=100)
    parser.add_argument("--slices", type=int, default=20)
    parser.add_argument("--height", type=int, default=58)
    parser.add_argument("--width", type=int, default=78)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--folds", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--qnet-epochs", type=int, default=50)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    load_before = load_average()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    labels = [p % 2 for p in range(args.participants)]
    with tempfile.TemporaryDirectory(prefix="bids_qnet_scale_") as tmp:
        stacks = cohort(Path(tmp), args)
        step_s = train_step_seconds(stacks, labels, device, args)
        print(f"stage-1 step: {step_s:.2f} s ({args.batch_size / step_s:.1f} images/s)")
        infer_s = inference_seconds_per_image(stacks, device, args)
        print(f"inference: {1 / infer_s:.1f} images/s")
    n_train = round(args.participants * (args.folds - 1) / args.folds)
    stage2_s = stage2_epoch_seconds(n_train, device, args)
    print(f"stage-2 epoch ({n_train} participants): {stage2_s:.3f} s")
    estimate = extrapolate(step_s, infer_s, stage2_s, args)
    figures = {
        "stage1_step_s": step_s,
        "stage1_train_images_per_s": args.batch_size / step_s,
        "inference_images_per_s": 1 / infer_s,
        "stage2_epoch_s": stage2_s,
        "extrapolated": estimate,
        "target_s_on_one_h100": 20 * 60,
        "peak_rss_gib": peak_rss_gib(),
        "note": "extrapolated from the measured per-batch/per-epoch times on this device; "
        "bootstrap, attribution and figures not included",
    }
    report = report_header("group_scale", vars(args), load_before)
    report.update(device=str(device), threads=torch.get_num_threads(), figures=figures)
    path = write_result(f"group_scale_{device.type}", report, args.output)
    print(
        f"extrapolated cross-validation + final model on {device}: "
        f"{estimate['total_h']:.2f} h (stage-1 epoch {estimate['stage1_epoch_s']:.1f} s); "
        f"load {load_before} -> {report['load_average_after']}; wrote {path}"
    )


if __name__ == "__main__":
    main()
