"""One stage-1 epoch of ``train_stage1`` vs a bare training loop on the same network and data.

Synthetic slice stacks are written as ``.npy`` files and opened as memmaps. Timed:

(a) ``train_stage1`` with ``epochs=1``: the epoch itself (reading slices from the memmaps through
    the DataLoader, batched augmentation on the device, forward, backward, Adam step; the
    history's ``seconds``) and the whole call (plus model building, the SWA copy and the
    ``update_bn`` pass over the training slices);
(b) a bare loop: the same ResNet18 (same initial weights), Adam, cross-entropy and batch size on
    the same slices, already resized to ``image_size`` and held in memory as one tensor; shuffled
    batches by indexing, no augmentation, no DataLoader;
(c) for the breakdown, the loading (DataLoader over the memmaps) and the train augmentation alone
    over one epoch.

A few warm-up steps at the same shapes run first so that neither side pays one-off kernel set-up;
with ``--repeats`` above 1 the two sides alternate (bare first on even repetitions) and the
ratio is that of the medians. Prints a table and writes ``benchmarks/results/stage1_epoch.json``
with the machine, the load average before and after, and the peak RSS.

Usage: python benchmarks/stage1_epoch.py [--participants 40] [--slices 20] [--height 80]
       [--width 100] [--image-size 96] [--batch-size 64] [--device cpu] [--seed 0] [--repeats 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    cpu_seconds,
    load_average,
    peak_rss_gib,
    report_header,
    sync,
    write_result,
)

from bids_qnet.models.device import resolve_device  # noqa: E402
from bids_qnet.models.resnet import build_classifier  # noqa: E402
from bids_qnet.training.augment import test_transform, train_transform  # noqa: E402
from bids_qnet.training.stage1 import Stage1Config, slice_dataset, train_stage1  # noqa: E402


def synthetic_stacks(args, folder: Path) -> tuple[list[np.ndarray], list[int]]:
    """Write one (S, 3, H, W) float32 stack per participant; return memmaps and labels."""
    rng = np.random.default_rng(args.seed)
    stacks, labels = [], []
    h, w = args.height, args.width
    for p in range(args.participants):
        stack = rng.uniform(0.0, 0.4, (args.slices, 3, h, w)).astype(np.float32)
        if p % 2:
            stack[:, :, h // 3 : 2 * h // 3, w // 3 : 2 * w // 3] += 0.5
        path = folder / f"sub-{p:03d}.npy"
        np.save(path, stack)
        stacks.append(np.load(path, mmap_mode="r"))
        labels.append(p % 2)
    return stacks, labels


def warm_up(args, device: torch.device) -> None:
    model, _ = build_classifier(3, 2, "random", args.seed + 1)
    model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.rand(args.batch_size, 3, args.image_size, args.image_size, device=device)
    y = torch.randint(0, 2, (args.batch_size,), device=device)
    for _ in range(2):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    train_transform(args.image_size, 3)(torch.rand(4, 3, args.height, args.width, device=device))
    sync(device)


def bare_epoch(args, images: torch.Tensor, labels: torch.Tensor, device) -> tuple[float, float]:
    """Time one epoch of the plainest loop on in-memory, already resized tensors (wall, CPU)."""
    model, _ = build_classifier(3, 2, "random", args.seed)
    model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-4)
    images, labels = images.to(device), labels.to(device)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(args.seed))
    sync(device)
    start, cpu = time.perf_counter(), cpu_seconds()
    for i in range(0, len(order), args.batch_size):
        index = order[i : i + args.batch_size].to(device)
        loss = F.cross_entropy(model(images[index]), labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    sync(device)
    return time.perf_counter() - start, cpu_seconds() - cpu


def staged_epoch(stacks, labels, config, device) -> tuple[float, float, float]:
    """Run ``train_stage1`` for one epoch: (epoch wall s, epoch CPU s, whole call wall s).

    The epoch's CPU time runs from the call to the end of the epoch (the progress callback), so
    it also counts building the model (small): a slight overestimate.
    """
    marks = []
    start, cpu = time.perf_counter(), cpu_seconds()
    result = train_stage1(stacks, labels, 2, config, progress=lambda _: marks.append(cpu_seconds()))
    sync(device)
    return result.history[0]["seconds"], marks[0] - cpu, time.perf_counter() - start


def pipeline_parts(args, stacks, labels, device) -> tuple[float, float]:
    """Time the DataLoader over the memmaps, and the train augmentation, over one epoch."""
    loader = torch.utils.data.DataLoader(
        slice_dataset(stacks, labels), args.batch_size, shuffle=True
    )
    start = time.perf_counter()
    batches = [x.to(device) for x, *_ in loader]
    sync(device)
    loading = time.perf_counter() - start
    transform = train_transform(args.image_size, 3)
    start = time.perf_counter()
    for x in batches:
        transform(x)
    sync(device)
    return loading, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--participants", type=int, default=40)
    parser.add_argument("--slices", type=int, default=20)
    parser.add_argument("--height", type=int, default=80)
    parser.add_argument("--width", type=int, default=100)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave)")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    load_before = load_average()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    n_images = args.participants * args.slices

    with tempfile.TemporaryDirectory() as tmp:
        stacks, labels = synthetic_stacks(args, Path(tmp))
        warm_up(args, device)
        config = Stage1Config(
            epochs=1,
            batch_size=args.batch_size,
            image_size=args.image_size,
            weights="random",
            seed=args.seed,
            device=str(device),
        )
        with torch.inference_mode():  # resize once, outside the timing
            resized = test_transform(args.image_size, 3)(torch.from_numpy(np.concatenate(stacks)))
        targets = torch.tensor(np.repeat(labels, args.slices))
        ours, bares = [], []  # (wall, CPU[, call]) per repetition
        for repeat in range(args.repeats):
            if repeat % 2 == 0:
                bares.append(bare_epoch(args, resized.clone(), targets, device))
            ours.append(staged_epoch(stacks, labels, config, device))
            if repeat % 2 == 1:
                bares.append(bare_epoch(args, resized.clone(), targets, device))
            print(
                f"repeat {repeat}: train_stage1 epoch {ours[-1][0]:.2f} s (CPU {ours[-1][1]:.2f}),"
                f" bare {bares[-1][0]:.2f} s (CPU {bares[-1][1]:.2f})",
                flush=True,
            )
        loading, augmenting = pipeline_parts(args, stacks, labels, device)
    epoch, epoch_cpu, call = (statistics.median(r[i] for r in ours) for i in range(3))
    bare, bare_cpu = (statistics.median(r[i] for r in bares) for i in range(2))

    figures = {
        "train_stage1_epoch_s": epoch,
        "train_stage1_call_s": call,
        "bare_epoch_s": bare,
        "ratio_epoch_vs_bare": epoch / bare,
        "train_stage1_epoch_cpu_s": epoch_cpu,
        "bare_epoch_cpu_s": bare_cpu,
        "ratio_epoch_vs_bare_cpu": epoch_cpu / bare_cpu,
        "loading_epoch_s": loading,
        "augmentation_epoch_s": augmenting,
        "train_stage1_images_per_s": n_images / epoch,
        "bare_images_per_s": n_images / bare,
        "train_stage1_epochs_wall_cpu_call_s": ours,
        "bare_epochs_wall_cpu_s": bares,
        "peak_rss_gib": peak_rss_gib(),
    }
    report = report_header("stage1_epoch", {**vars(args), "images": n_images}, load_before)
    report.update(device=str(device), threads=torch.get_num_threads(), figures=figures)
    path = write_result("stage1_epoch", report, args.output)
    print(f"{n_images} slices {args.height}x{args.width} -> {args.image_size}, device {device}")
    for key, value in figures.items():
        if isinstance(value, float):
            print(f"  {key:28s} {value:10.3f}")
    print(f"load {load_before} -> {report['load_average_after']}; wrote {path}")


if __name__ == "__main__":
    main()
