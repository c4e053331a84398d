"""Integrated Gradients per participant and map: one scan a call vs several scans in one call.

The group level attributes every participant with the fold model that did not see it
(``desc-IG``, and ``desc-IGreference`` from the other classes' mean). This times
:func:`bids_qnet.attribution.integrated.integrated_gradients`, the library's own call, on the
whole network the group level attributes (ResNet18 backbone with the stage-1 geometry and
normalisation, the Bi-LSTM Q-Net, stretched input; random weights: the cost does not depend on
them) for ``--participants`` synthetic slice stacks:

(a) one scan a call, as ``attribute_cohort`` did before 0.3.0: ``--participants`` calls;
(b) the same scans in calls of ``--group`` scans (``target`` one per scan), the pass size
    (``internal_batch_size``) the library chooses for that many scans;

and checks that (b) gives (a)'s attributions (largest absolute difference, recorded). The two
alternate over ``--repeats`` after a warm-up; the figures are seconds per participant and map
(medians), wall and CPU, and the ratio (b)/(a). The cost is linear in ``--steps`` (each step is
one forward and backward pass of every slice), so a run at fewer steps than the default 50
states the per-step figure too. Writes ``benchmarks/results/attribution_<device>.json``.

Usage: python benchmarks/attribution.py [--participants 4] [--group 4] [--slices 20]
       [--height 58] [--width 78] [--image-size 224] [--steps 10] [--device cpu]
       [--repeats 2] [--threads N]
"""

from __future__ import annotations

import argparse
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
    peak_rss_gib,
    report_header,
    sync,
    write_result,
)

from bids_qnet.attribution.integrated import (  # noqa: E402
    integrated_gradients,
    internal_batch_size,
)
from bids_qnet.attribution.network import SliceToScan, stage1_geometry  # noqa: E402
from bids_qnet.models.device import resolve_device  # noqa: E402
from bids_qnet.models.resnet import build_classifier, features  # noqa: E402
from bids_qnet.training.stage2 import Stage2Config, build_qnet  # noqa: E402


def network(args, device: torch.device) -> SliceToScan:
    """The group level's attributed network (random weights), in eval mode on ``device``."""
    classifier, _ = build_classifier(3, 2, "random", seed=args.seed)
    torch.manual_seed(args.seed)
    qnet = build_qnet(2, Stage2Config())
    geometry, normalise = stage1_geometry(args.image_size, 3)
    model = SliceToScan(features(classifier), qnet, geometry, normalise, stretch=True)
    return model.to(device).eval()


def inputs(args, model: SliceToScan, device: torch.device) -> torch.Tensor:
    """``(P, T, 3, H, W)`` stretched synthetic slices on ``device``."""
    rng = np.random.default_rng(args.seed)
    shape = (args.participants, args.slices, 3, args.height, args.width)
    stored = torch.from_numpy(rng.uniform(0, 1, shape).astype(np.float32)).to(device)
    return model.to_input(stored)


def one_by_one(model, x, baseline, targets, args, device) -> list[np.ndarray]:
    """(a): one call per scan, each with the library's pass size for one scan."""
    batch = internal_batch_size(args.slices, args.image_size, args.steps, device)
    return [
        integrated_gradients(
            model, x[i : i + 1], baseline[i : i + 1], targets[i], args.steps, batch
        ).attribution
        for i in range(len(x))
    ]


def grouped(model, x, baseline, targets, args, device) -> list[np.ndarray]:
    """(b): calls of ``--group`` scans, the library's pass size for that many scans."""
    out = []
    for start in range(0, len(x), args.group):
        part = slice(start, start + args.group)
        n = len(targets[part])
        batch = internal_batch_size(args.slices, args.image_size, args.steps * n, device)
        results = integrated_gradients(
            model, x[part], baseline[part], list(targets[part]), args.steps, batch
        )
        out.extend(r.attribution for r in results)
    return out


def timed(function, *call) -> tuple[float, float, list[np.ndarray]]:
    """Wall and CPU seconds of one call (CUDA synchronised) and its result."""
    device = call[-1]
    sync(device)
    wall, cpu = time.perf_counter(), cpu_seconds()
    result = function(*call)
    sync(device)
    return time.perf_counter() - wall, cpu_seconds() - cpu, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--participants", type=int, default=4)
    parser.add_argument("--group", type=int, default=4, help="scans per call in (b)")
    parser.add_argument("--slices", type=int, default=20)
    parser.add_argument("--height", type=int, default=58)
    parser.add_argument("--width", type=int, default=78)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    load_before = load_average()
    model = network(args, device)
    x = inputs(args, model, device)
    baseline = torch.zeros_like(x)
    targets = [p % 2 for p in range(args.participants)]
    warm = argparse.Namespace(**{**vars(args), "steps": 1, "slices": args.slices})
    one_by_one(model, x[:1], baseline[:1], targets[:1], warm, device)
    figures = {"one_by_one": [], "grouped": []}
    difference = 0.0
    for repeat in range(args.repeats):
        order = ("one_by_one", "grouped") if repeat % 2 == 0 else ("grouped", "one_by_one")
        results = {}
        for name in order:
            function = one_by_one if name == "one_by_one" else grouped
            wall, cpu, results[name] = timed(function, model, x, baseline, targets, args, device)
            figures[name].append((wall / args.participants, cpu / args.participants))
            print(f"{name}: {wall / args.participants:.2f} s wall per participant and map")
        difference = max(
            difference,
            max(
                float(np.abs(a - b).max())
                for a, b in zip(results["one_by_one"], results["grouped"], strict=True)
            ),
        )
    medians = {
        name: {
            "wall_s": round(statistics.median(w for w, _ in rows), 3),
            "cpu_s": round(statistics.median(c for _, c in rows), 3),
        }
        for name, rows in figures.items()
    }
    for entry in medians.values():
        entry["wall_s_per_step"] = round(entry["wall_s"] / args.steps, 4)
        entry["wall_s_at_50_steps"] = round(entry["wall_s_per_step"] * 50, 2)
    ratio = medians["grouped"]["wall_s"] / medians["one_by_one"]["wall_s"]
    report = report_header("attribution", vars(args), load_before)
    report.update(
        device=str(device),
        threads=torch.get_num_threads(),
        per_participant_and_map=medians,
        grouped_over_one_by_one_wall=round(ratio, 3),
        max_abs_difference=difference,
        figures=figures,
        peak_rss_gib=peak_rss_gib(),
        peak_gpu_gib=round(torch.cuda.max_memory_allocated() / 1024**3, 2)
        if device.type == "cuda"
        else None,
    )
    path = write_result(
        "attribution",
        report,
        args.output or Path(__file__).parent / "results" / f"attribution_{device.type}.json",
    )
    for name, entry in medians.items():
        print(
            f"{name}: {entry['wall_s']:.2f} s wall, {entry['cpu_s']:.2f} s CPU per participant "
            f"and map at {args.steps} steps ({entry['wall_s_at_50_steps']:.1f} s at 50)"
        )
    print(f"grouped / one by one: {ratio:.2f}x; largest difference {difference:.2e}; {path}")


if __name__ == "__main__":
    main()
