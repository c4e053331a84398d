"""Embedding throughput: ``bids_qnet.models.embedding.embed_slices`` vs a bare ResNet18 forward.

Both sides embed the same slices with the same network (torchvision ResNet18, ``fc`` removed,
the same weights), batch size and device, in eval mode under ``torch.inference_mode()``:

(a) ``embed_slices``: from the (S, C, H, W) float32 stack as the participant level holds it
    (pad to a square, resize, normalise per batch, forward, collect as NumPy);
(b) the bare reference: the slices already resized and normalised, held as one tensor on the
    device, nothing but ``model(batch)`` per batch (plus the same bf16 autocast on CUDA), with
    its own copy of the network in PyTorch's default memory format (``embed_slices`` switches
    its network to channels-last, which would otherwise carry over to the bare side).

Repetitions alternate (bare, embed, bare, embed, ...) after a warm-up so that machine noise hits
both sides alike; the ratio is computed from the medians. Prints the figures and writes
``benchmarks/results/embedding.json``.

Usage: python benchmarks/embedding.py [--slices 40] [--height 80] [--width 100]
       [--image-size 224] [--batch-size 64] [--device cpu] [--repeats 3] [--threads N]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    cpu_seconds,
    load_average,
    memory_status,
    peak_rss_gib,
    report_header,
    sync,
    write_result,
)

from bids_qnet.models.device import resolve_device  # noqa: E402
from bids_qnet.models.embedding import (  # noqa: E402
    IMAGENET_MEAN,
    IMAGENET_STD,
    embed_slices,
    load_backbone,
    square_resize,
)


def bare_inputs(stack: np.ndarray, image_size: int, device: torch.device) -> torch.Tensor:
    """Resize and normalise every slice once, outside the timing, as embed_slices does."""
    with torch.inference_mode():
        x = square_resize(torch.from_numpy(stack), image_size)
        mean = torch.tensor(IMAGENET_MEAN).view(1, -1, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, -1, 1, 1)
        return ((x - mean) / std).to(device).contiguous()


def bare_forward(model, inputs: torch.Tensor, batch_size: int, device) -> tuple[float, float]:
    """Time ``model(batch)`` over the prepared inputs (wall and CPU seconds)."""
    model.to(device).eval()
    outputs = []
    sync(device)
    start, cpu = time.perf_counter(), cpu_seconds()
    with torch.inference_mode():
        for first in range(0, len(inputs), batch_size):
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
                outputs.append(model(inputs[first : first + batch_size]))
    sync(device)
    return time.perf_counter() - start, cpu_seconds() - cpu


def pipeline(model, stack: np.ndarray, image_size: int, batch_size: int, device):
    """Time ``embed_slices`` on the stack (wall and CPU seconds)."""
    sync(device)
    start, cpu = time.perf_counter(), cpu_seconds()
    embed_slices(model, stack, image_size, batch_size, device)
    sync(device)
    return time.perf_counter() - start, cpu_seconds() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=40)
    parser.add_argument("--height", type=int, default=80)
    parser.add_argument("--width", type=int, default=100)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    load_before = load_average()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    rng = np.random.default_rng(args.seed)
    stack = rng.uniform(0, 1, (args.slices, 3, args.height, args.width)).astype(np.float32)
    model, _ = load_backbone("random", 3, args.seed)
    bare_model = copy.deepcopy(model)  # stays in the default (NCHW) memory format
    inputs = bare_inputs(stack, args.image_size, device)

    # Warm-up at the same shapes (kernel selection, allocator), not timed.
    bare_forward(bare_model, inputs[: args.batch_size], args.batch_size, device)
    pipeline(model, stack[: args.batch_size], args.image_size, args.batch_size, device)

    bare, ours = [], []
    for repeat in range(args.repeats):
        bare.append(bare_forward(bare_model, inputs, args.batch_size, device))
        ours.append(pipeline(model, stack, args.image_size, args.batch_size, device))
        print(f"repeat {repeat}: bare {bare[-1]}, embed_slices {ours[-1]} (wall, CPU)", flush=True)
    bare_s, ours_s = (statistics.median(r[0] for r in v) for v in (bare, ours))
    bare_cpu, ours_cpu = (statistics.median(r[1] for r in v) for v in (bare, ours))
    figures = {
        "bare_wall_cpu_s": bare,
        "embed_slices_wall_cpu_s": ours,
        "bare_slices_per_s": args.slices / bare_s,
        "embed_slices_per_s": args.slices / ours_s,
        "throughput_ratio": bare_s / ours_s,
        "throughput_ratio_cpu": bare_cpu / ours_cpu,
        "target_throughput_ratio": 0.8,
        "peak_rss_gib": peak_rss_gib(),
        "memory": memory_status(),
    }
    report = report_header("embedding", vars(args), load_before)
    report.update(device=str(device), threads=torch.get_num_threads(), figures=figures)
    path = write_result("embedding", report, args.output)
    print(
        f"{args.slices} slices {args.height}x{args.width} -> {args.image_size}, batch "
        f"{args.batch_size}, {device}, {torch.get_num_threads()} thread(s): bare "
        f"{figures['bare_slices_per_s']:.1f} slices/s, embed_slices "
        f"{figures['embed_slices_per_s']:.1f} slices/s, ratio {figures['throughput_ratio']:.3f}"
        f" (target >= 0.8); peak RSS {figures['peak_rss_gib']} GiB; load "
        f"{load_before} -> {report['load_average_after']} -> {path}"
    )


if __name__ == "__main__":
    main()
