"""A paper-size cohort for the group level, cloned from a few real participant-level outputs.

The group level reads only the participant level's derivatives (slice stacks, embeddings, crop
grids, sidecars) and the labels of ``participants.tsv``. This script takes the derivatives of a
few participants that the real participant level wrote (``--source``: its output folder, and the
BIDS folder it ran on) and writes ``--participants`` clones of them into a new output folder
with a new BIDS folder (``participants.tsv`` and ``dataset_description.json`` only), so that the
real CLI (``bids_qnet BIDS OUT group ...``) runs at the paper's size where running the
participant level a hundred times is out of reach (a GPU node with a few minutes).

Each clone copies one source participant's crop files (images, slices, embeddings and their
sidecars; not the whole-brain maps or the transforms, which the group level does not read)
under its own label (``sub-NNN``, names and
sidecar text), and its slice stack is made its own: a smooth per-participant gain and noise on
every channel, and for the second class (half the cohort, alternating) a brighter centre on
the first channel (the effect a classifier can learn). Values stay in ``[0, 1]`` and finite, as
the participant level's stretched slices are; sidecars keep their ``Complete`` flag and
checksums of a changed file are recomputed. The embeddings are left as they are (with
``--stage1 train``, the default, the group level computes its own).

Usage: python benchmarks/make_cohort.py --source-bids BIDS --source-out OUT --bids NEW_BIDS
       --out NEW_OUT [--participants 100] [--seed 0]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np


def clone(source: Path, label: str, target_root: Path, index: int, rng, effect: bool) -> None:
    """Copy one participant's derivative folder as ``sub-<label>``, its slices made its own."""
    old = source.name  # sub-XX
    new = f"sub-{label}"
    for path in sorted(source.rglob("*")):
        if path.is_dir() or not _needed(path):
            continue
        target = target_root / new / path.relative_to(source)
        target = target.with_name(path.name.replace(old, new))
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.name.endswith("_slices.npy"):
            np.save(target, _perturbed(np.load(path), rng, effect))
        elif path.suffix in (".json", ".tsv", ".html", ".txt"):
            text = re.sub(rf"\b{re.escape(old)}\b", new, path.read_text())
            target.write_text(text)
        else:
            shutil.copyfile(path, target)
    for sidecar in (target_root / new).rglob("*_slices.json"):
        _update_checksum(sidecar)


def _needed(path: Path) -> bool:
    """What the group level reads of a participant: the crop's images, slices, embeddings."""
    return "_desc-bgcrop_" in path.name or "_desc-brain_" in path.name


def _perturbed(stack: np.ndarray, rng, effect: bool) -> np.ndarray:
    """Gain field, noise and (for the second class) a brighter centre on the first channel."""
    stack = np.asarray(stack, dtype=np.float32)
    s, c, h, w = stack.shape
    rows = np.linspace(-1, 1, h, dtype=np.float32)[:, None]
    cols = np.linspace(-1, 1, w, dtype=np.float32)[None, :]
    gain = 1 + 0.05 * rng.standard_normal((1, c, 1, 1)).astype(np.float32)
    gain = gain + 0.03 * (rng.standard_normal() * rows + rng.standard_normal() * cols)
    out = stack * gain + 0.02 * rng.standard_normal(stack.shape).astype(np.float32)
    if effect:
        centre = np.exp(-(rows**2 + cols**2) / 0.1).astype(np.float32)
        out[:, 0] += 0.15 * centre * (stack[:, 0] > 0)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _update_checksum(sidecar: Path) -> None:
    """Recompute any SHA-256 the sidecar records of its data file."""
    meta = json.loads(sidecar.read_text())
    data = sidecar.with_suffix(".npy")
    changed = False
    for key in ("SHA256", "Sha256", "sha256"):
        if key in meta and data.is_file():
            meta[key] = hashlib.sha256(data.read_bytes()).hexdigest()
            changed = True
    if changed:
        sidecar.write_text(json.dumps(meta, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source-bids", type=Path, required=True)
    parser.add_argument("--source-out", type=Path, required=True)
    parser.add_argument("--bids", type=Path, required=True, help="new BIDS folder (labels)")
    parser.add_argument("--out", type=Path, required=True, help="new output folder")
    parser.add_argument("--participants", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sources = sorted(p for p in args.source_out.glob("sub-*") if p.is_dir())
    if not sources:
        raise SystemExit(f"no sub-* folders in {args.source_out}")
    rng = np.random.default_rng(args.seed)
    args.bids.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(
        args.source_bids / "dataset_description.json", args.bids / "dataset_description.json"
    )
    for path in args.source_out.iterdir():  # dataset files, the atlas on the output grid
        if path.is_file() and not path.name.startswith("sub-"):
            shutil.copyfile(path, args.out / path.name)
    rows = ["participant_id\tgroup"]
    width = max(3, len(str(args.participants)))
    for index in range(args.participants):
        label = f"{index + 1:0{width}d}"
        effect = index % 2 == 1
        clone(sources[index % len(sources)], label, args.out, index, rng, effect)
        rows.append(f"sub-{label}\t{'HH' if effect else 'HC'}")
    (args.bids / "participants.tsv").write_text("\n".join(rows) + "\n")
    print(f"{args.participants} participants from {len(sources)}: {args.bids}, {args.out}")


if __name__ == "__main__":
    main()
