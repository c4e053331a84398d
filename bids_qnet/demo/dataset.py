"""`make_demo_dataset`: settings, the output folder, the participant loop and the ground truth."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bids_qnet.demo.bids_files import (
    DEMO_NAME,
    save_nifti,
    scan_files,
    write_dataset_files,
    write_json,
)
from bids_qnet.demo.cohort import participants_table, simulate_participant
from bids_qnet.demo.phantom import DEFAULT_PLANTED, NUCLEI, build_phantom
from bids_qnet.errors import OutputError, UsageError
from bids_qnet.reference import load_reference

LOGGER = logging.getLogger(__name__)

T1W_GRIDS = ("gre", "separate", "mixed")
CONVENTIONS = {
    "pose": "scanner_mm = Rz Ry Rx (rotation_deg) @ diag(scale) @ template_mm + translation_mm",
    "warp": "a scan shows at scanner point y the template point p + d(p), p = pose^-1(y), "
    "d_c(p) = sum_k warp_mm[c][k] prod_a cos(pi k_a (p_a - lo_a) / (hi_a - lo_a)), warp_box_mm",
    "iron": "patients: positive chi and R2* of planted regions times effect_factor",
}


@dataclass(frozen=True)
class DemoInfo:
    """Where a demo dataset went and who is in it.

    Attributes
    ----------
    bids_dir : Path
        Root of the BIDS raw dataset.
    truth_path : Path
        JSON ground truth, outside ``bids_dir``.
    participants : pandas.DataFrame
        The ``participants.tsv`` table (``participant_id``, ``group``, ``age``, ``sex``).
    """

    bids_dir: Path
    truth_path: Path
    participants: pd.DataFrame


def make_demo_dataset(
    out_dir: Path,
    n_participants: int = 16,
    seed: int = 0,
    planted_regions: Sequence[str] = DEFAULT_PLANTED,
    iron_effect: float = 0.5,
    gre_voxel_mm: Sequence[float] = (0.9, 0.9, 2.0),
    t1w_grid: str = "mixed",
    resolution: float = 1.0,
    sessions: int = 1,
    truth_dir: Path | None = None,
    overwrite: bool = False,
) -> DemoInfo:
    """Write a synthetic BIDS dataset of QSM (Chimap), R2* (R2starmap) and T1w images.

    Parameters
    ----------
    out_dir : Path
        BIDS dataset root; must be missing or empty unless ``overwrite``.
    n_participants : int
        Number of participants; each consecutive pair is one control (HC) and one patient (HH),
        and participants keep their data when ``n_participants`` grows.
    seed : int
        Random seed; the same seed gives the same bytes on the same machine.
    planted_regions : sequence of str
        Atlas regions with more iron in patients.
    iron_effect : float
        In patients, positive susceptibility and R2* of the planted regions are multiplied by
        ``1 + iron_effect * u``, ``u ~ U(0.6, 1.4)`` per patient.
    gre_voxel_mm : sequence of 3 float
        Voxel size of the oblique GRE grid that Chimap and R2starmap share.
    t1w_grid : {"gre", "separate", "mixed"}
        T1w on the GRE grid, on its own 1 mm axis-aligned grid, or alternating by participant.
    resolution : float
        Template resolution (mm) the phantom is built at; 2.0 is quick.
    sessions : int
        Sessions per participant (same tissue values, new pose, grids and noise); more than one
        writes ``ses-01`` ... folders.
    truth_dir : Path, optional
        Folder for ``truth.json``; default ``<out_dir>_truth`` beside ``out_dir``.
    overwrite : bool
        Replace an earlier demo dataset in ``out_dir``.

    Returns
    -------
    DemoInfo

    Raises
    ------
    UsageError
        On invalid settings or a non-empty ``out_dir`` without ``overwrite``.
    OutputError
        When ``overwrite`` would delete a folder that is not a demo dataset.
    """
    out_dir = Path(out_dir).absolute()
    truth_dir = Path(truth_dir or out_dir.with_name(out_dir.name + "_truth")).absolute()
    settings = {
        "seed": seed,
        "n_participants": n_participants,
        "iron_effect": iron_effect,
        "planted_regions": list(planted_regions),
        "gre_voxel_mm": list(gre_voxel_mm),
        "t1w_grid": t1w_grid,
        "resolution": resolution,
        "sessions": sessions,
    }
    labels = _check_settings(settings)
    _prepare_out_dir(out_dir, truth_dir, overwrite)
    phantom = build_phantom(float(resolution))
    planted = np.flatnonzero(np.isin(phantom.atlas, labels) & (phantom.seg > 0))
    table = participants_table(n_participants, seed)
    children = np.random.SeedSequence(seed).spawn(n_participants)
    truth, pending = [], []
    with ThreadPoolExecutor(max_workers=1) as writer:  # gzip runs beside the next participant
        for i, (row, child) in enumerate(zip(table.itertuples(index=False), children, strict=True)):
            on_gre = {"gre": True, "separate": False}.get(t1w_grid, i % 2 == 0)
            rng = np.random.default_rng(child)
            scans, record = simulate_participant(row, rng, phantom, planted, settings, on_gre)
            for future in pending:  # at most one participant waits in memory
                future.result()
            pending = [writer.submit(save_nifti, *item) for item in scan_files(out_dir, row, scans)]
            truth.append(record)
            LOGGER.info("made %s (%s)", row.participant_id, row.group)
        for future in pending:
            future.result()
    write_dataset_files(out_dir, table)
    truth_dir.mkdir(parents=True, exist_ok=True)
    box = [phantom.head.min(0).tolist(), phantom.head.max(0).tolist()]
    write_json(
        truth_dir / "truth.json",
        {
            "bids_dir": str(out_dir),
            "settings": settings,
            "warp_box_mm": box,
            "conventions": CONVENTIONS,
            "participants": truth,
        },
    )
    return DemoInfo(out_dir, truth_dir / "truth.json", table)


def _check_settings(s: dict) -> list[int]:
    """Raise UsageError on a bad setting; return the atlas labels of the planted regions."""
    atlas = load_reference().labels
    unknown = [r for r in s["planted_regions"] if r not in atlas]
    checks = {
        "n_participants": s["n_participants"] >= 1,
        "sessions": s["sessions"] >= 1,
        "iron_effect": s["iron_effect"] >= 0,
        "seed": s["seed"] >= 0,
        "resolution": 0.5 <= s["resolution"] <= 4,
        "t1w_grid": s["t1w_grid"] in T1W_GRIDS,
        "gre_voxel_mm": len(s["gre_voxel_mm"]) == 3 and min(s["gre_voxel_mm"]) > 0,
    }
    for name, good in checks.items():
        if not good:
            raise UsageError(f"invalid {name} {s[name]!r}; see bids_qnet-demo --help")
    if unknown or not s["planted_regions"]:
        raise UsageError(f"planted regions {unknown} are not in the atlas; try {', '.join(NUCLEI)}")
    return [atlas[r] for r in s["planted_regions"]]


def _prepare_out_dir(out_dir: Path, truth_dir: Path, overwrite: bool) -> None:
    """Check where the dataset and truth go; empty ``out_dir`` only if it holds a demo dataset."""
    if truth_dir == out_dir or out_dir in truth_dir.parents:
        raise UsageError(f"the truth folder {truth_dir} must be outside the BIDS folder {out_dir}")
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"{out_dir} exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not overwrite:
            raise UsageError(f"{out_dir} is not empty; choose another folder or pass --overwrite")
        description = out_dir / "dataset_description.json"
        name = json.loads(description.read_text()).get("Name") if description.is_file() else None
        if name != DEMO_NAME:
            raise OutputError(f"{out_dir} is not a bids_qnet demo dataset; refusing to replace it")
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
