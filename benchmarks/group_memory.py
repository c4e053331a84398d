"""Group-level memory: peak RSS grows with the batch size, not with the cohort.

Writes a synthetic cohort of ``_slices.npy`` stacks to a temporary folder (default under /tmp,
never the repository), then, for every (cohort size, batch size) pair, runs in a fresh child
process what the group level does with them:

1. memory-maps every stack as :class:`bids_qnet.inputs.scans.Scan` does and checks them all as
   ``train_stage1`` does (every value read once);
2. one full epoch of stage 1's shuffled DataLoader over every slice of the cohort (loading only);
3. a bounded number of stage-1 training steps at the paper's image size (DataLoader batch from the
   memmaps, batched train augmentation, ResNet18 forward and backward, Adam step);
4. stage 2 on embeddings of the whole cohort: ``train_stage2`` for one epoch and
   ``predict_stage2``.

Memory is sampled every 50 ms: ``RssAnon`` (what must fit in RAM) and the peak ``VmHWM``
(also counts the memory-mapped slice pages read, which are clean page cache the kernel can
drop). Prints a table and writes ``benchmarks/results/group_memory.json``.

Usage: python benchmarks/group_memory.py [--cohorts 100 500] [--batch-sizes 16 64]
       [--slices 20] [--height 80] [--width 100] [--image-size 224] [--steps 3] [--tmp /tmp]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import AnonPeak, load_average, memory_status, report_header, write_result  # noqa: E402


def write_cohort(folder: Path, n: int, args) -> list[Path]:
    """Write ``n`` synthetic (S, 3, H, W) float32 stacks in [0, 1]; return their paths."""
    rng = np.random.default_rng(args.seed)
    paths = []
    for p in range(n):
        path = folder / f"sub-{p:04d}_desc-bgcrop_slices.npy"
        stack = np.lib.format.open_memmap(
            path, "w+", np.float32, (args.slices, 3, args.height, args.width)
        )
        stack[:] = rng.uniform(0, 1, stack.shape).astype(np.float32)
        stack.flush()
        del stack
        paths.append(path)
    return paths


def child(args) -> None:
    """Run the group-level data path on the first ``--cohort`` stacks; print one JSON line."""
    import torch

    from bids_qnet.models.resnet import build_classifier
    from bids_qnet.training.augment import train_transform
    from bids_qnet.training.stage1 import (
        Stage1Config,
        check_stacks,
        prepare_model,
        slice_dataset,
        slice_loader,
        train_step,
    )
    from bids_qnet.training.stage2 import Stage2Config, predict_stage2, train_stage2

    torch.set_num_threads(args.threads)
    paths = sorted(Path(args.folder).glob("sub-*_slices.npy"))[: args.cohort]
    labels = [i % 2 for i in range(len(paths))]
    config = Stage1Config(batch_size=args.batch_size, image_size=args.image_size, seed=0)
    device = torch.device("cpu")
    phases = {}
    with AnonPeak() as total:
        baseline = memory_status()
        start = time.perf_counter()
        stacks = [np.load(p, mmap_mode="r") for p in paths]
        check_stacks(stacks, True)
        loader = slice_loader(slice_dataset(stacks, labels), config, device, shuffle=True)
        n_slices = sum(len(x) for x, *_ in loader)
        phases["load_epoch_s"] = round(time.perf_counter() - start, 1)
        phases["after_load"] = memory_status()

        model = prepare_model(build_classifier(3, 2, "random", 0)[0], device)
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
        augment = train_transform(config.image_size, 3)
        start = time.perf_counter()
        for step, (x, y, *_) in enumerate(loader):
            if step == args.steps:
                break
            train_step(model, optimizer, augment, x, y, device, config.amp)
        phases["train_steps_s"] = round(time.perf_counter() - start, 1)
        phases["after_train"] = memory_status()
        del model, optimizer

        rng = np.random.default_rng(0)
        embeddings = [rng.standard_normal((len(s), 512)).astype(np.float32) for s in stacks]
        config2 = Stage2Config(epochs=1, batch_size=args.batch_size, seed=0)
        start = time.perf_counter()
        result = train_stage2(embeddings, labels, 2, config2)
        predict_stage2(result.state, embeddings, 2, config2)
        phases["stage2_s"] = round(time.perf_counter() - start, 1)
    print(
        json.dumps(
            {
                "cohort": len(paths),
                "slices": n_slices,
                "batch_size": args.batch_size,
                "baseline": baseline,
                "peak_rss_anon_gib": total.peak,
                "peak_rss_gib": memory_status()["VmHWM"],
                **phases,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cohorts", type=int, nargs="+", default=[100, 500])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--slices", type=int, default=20)
    parser.add_argument("--height", type=int, default=80)
    parser.add_argument("--width", type=int, default=100)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=3, help="stage-1 training steps")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in the runs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tmp", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--output", type=Path)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--cohort", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    load_before = load_average()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bids_qnet_cohort_", dir=args.tmp) as tmp:
        paths = write_cohort(Path(tmp), max(args.cohorts), args)
        cohort_gib = sum(p.stat().st_size for p in paths) / 1024**3
        print(f"cohort: {len(paths)} stacks, {cohort_gib:.2f} GiB in {tmp}", flush=True)
        # Alternate the cohort sizes inside each batch size so that load changes hit both.
        for batch in args.batch_sizes:
            for cohort in args.cohorts:
                command = [sys.executable, __file__, "--child", "--folder", tmp]
                command += ["--cohort", str(cohort), "--batch-size", str(batch)]
                command += ["--image-size", str(args.image_size), "--steps", str(args.steps)]
                command += ["--threads", str(args.threads)]
                done = subprocess.run(command, check=True, capture_output=True, text=True)
                rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
                rows[-1]["load_average"] = load_average()
                print(json.dumps(rows[-1]), flush=True)
    largest = max(args.cohorts)
    report = report_header("group_memory", vars(args), load_before)
    report["cohort_bytes_gib"] = round(cohort_gib, 3)
    report["runs"] = rows
    report["max_peak_rss_gib_largest_cohort"] = max(
        r["peak_rss_gib"] for r in rows if r["cohort"] == largest
    )
    report["target"] = f"{largest} participants within 8 GiB; growth with batch, not cohort"
    path = write_result("group_memory", report, args.output)
    print(f"{'cohort':>7} {'batch':>6} {'peak anon GiB':>14} {'peak RSS GiB':>13}")
    for r in rows:
        print(
            f"{r['cohort']:7d} {r['batch_size']:6d} {r['peak_rss_anon_gib']:14.3f} "
            f"{r['peak_rss_gib']:13.3f}"
        )
    print(f"load {load_before} -> {report['load_average_after']}; wrote {path}")


if __name__ == "__main__":
    main()
