"""Participant level vs the bare antspyx registration calls on the same images.

Generates demo participants, then for each one times (a) the bare ``ants.registration`` calls
that the pipeline wraps (rigid co-registration when the T1w sits on its own grid, then affine+SyN
to the template with the same profile parameters) and (b) the whole participant level for that
participant (``bids_qnet ... participant --nprocs 1``) in a child process whose peak RSS is read
from ``getrusage``. Prints a table and writes ``benchmarks/results/participant_level.json``.

Usage: python benchmarks/participant_level.py [--participants 2] [--resolution 1]
       [--profile precise|fast] [--weights random] [--image-size 224]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import ants
import numpy as np

from bids_qnet.data import registration_profile
from bids_qnet.demo import make_demo_dataset
from bids_qnet.reference import brain_mask, load_reference, template_on_grid


def _kwargs(section: dict) -> dict:
    # antspyx ignores list-valued aff_* settings: pass tuples, as bids_qnet does.
    return {k: tuple(v) if isinstance(v, list) else v for k, v in section.items()}


def bare_registration(anat: Path, template, mask, profile: dict) -> float:
    """Time the bare ants.registration calls the pipeline makes, on one participant's images.

    Co-registration (rigid, when the T1w has its own grid), then the normalisation as bids_qnet
    runs it: an Affine stage and a SyNOnly stage initialised with it, template mask in both.
    """
    t1w = ants.image_read(str(next(anat.glob("*_T1w.nii.gz"))))
    r2s = ants.image_read(str(next(anat.glob("*_R2starmap.nii.gz"))))
    norm = _kwargs(profile["normalisation"])
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        same = t1w.shape == r2s.shape and np.allclose(t1w.origin, r2s.origin)
        if not same:
            ants.registration(
                fixed=t1w, moving=r2s, outprefix=f"{tmp}/c_", **_kwargs(profile["coregistration"])
            )
        affine = ants.registration(
            fixed=template,
            moving=t1w,
            mask=mask,
            outprefix=f"{tmp}/a_",
            **{**norm, "type_of_transform": "Affine"},
        )
        ants.registration(
            fixed=template,
            moving=t1w,
            mask=mask,
            outprefix=f"{tmp}/s_",
            initial_transform=affine["fwdtransforms"],
            write_composite_transform=True,
            **{**norm, "type_of_transform": "SyNOnly"},
        )
    return time.perf_counter() - start


def pipeline(bids: Path, out: Path, label: str, args) -> tuple[float, float]:
    """Run the participant level for one participant; return (seconds, peak RSS in GiB)."""
    command = [
        sys.executable,
        "-m",
        "bids_qnet.cli.run",
        str(bids),
        str(out),
        "participant",
        "--participant-label",
        label,
        "--registration-profile",
        args.profile,
        "--embedding-weights",
        args.weights,
        "--image-size",
        str(args.image_size),
        "--template-resolution",
        str(args.resolution),
        "--nprocs",
        "1",
        "--omp-nthreads",
        "1",
        "--plugin",
        "Linear",
        "-w",
        str(out.parent / "work"),
        "--random-seed",
        "1",
    ]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2
    return seconds, peak_gib


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--participants", type=int, default=2)
    parser.add_argument("--resolution", type=float, default=1.0)
    parser.add_argument("--profile", default="precise")
    parser.add_argument("--weights", default="random")
    parser.add_argument("--image-size", type=int, default=224)
    args = parser.parse_args()
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = "1"
    profile = registration_profile(args.profile)
    with tempfile.TemporaryDirectory(prefix="bench_") as tmp:
        root = Path(tmp)
        demo = make_demo_dataset(
            root / "bids",
            n_participants=args.participants,
            seed=3,
            resolution=args.resolution,
            t1w_grid="mixed",
        )
        template = template_on_grid(load_reference(), args.resolution)
        mask = brain_mask(template)
        rows = []
        for sub_dir in sorted((root / "bids").glob("sub-*")):
            label = sub_dir.name.removeprefix("sub-")
            bare = bare_registration(sub_dir / "anat", template, mask, profile)
            seconds, peak = pipeline(demo.bids_dir, root / "out", label, args)
            rows.append(
                {
                    "participant": label,
                    "bare_registration_s": round(bare, 1),
                    "participant_level_s": round(seconds, 1),
                    "ratio": round(seconds / bare, 3),
                    "peak_rss_gib": round(peak, 2),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    result = {
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores",
        "settings": vars(args),
        "participants": rows,
        "mean_ratio": round(float(np.mean([r["ratio"] for r in rows])), 3),
        "max_peak_rss_gib": max(r["peak_rss_gib"] for r in rows),
    }
    target = Path(__file__).parent / "results" / "participant_level.json"
    target.parent.mkdir(exist_ok=True)
    target.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"mean ratio pipeline/bare registration: {result['mean_ratio']}; "
        f"peak RSS {result['max_peak_rss_gib']} GiB -> {target}"
    )


if __name__ == "__main__":
    main()
