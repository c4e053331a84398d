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
from bids_qnet.demo.effects import EFFECT_KINDS, R2S_PER_PPM, Effect, locate_regions
from bids_qnet.demo.phantom import (
    DEFAULT_PLANTED,
    NUCLEI,
    base_susceptibility,
    build_phantom,
    regional_sd,
)
from bids_qnet.errors import OutputError, UsageError
from bids_qnet.inputs.reference import load_reference

LOGGER = logging.getLogger(__name__)

T1W_GRIDS = ("gre", "separate", "mixed")
VARIABILITY = ("demo", "realistic")
CONVENTIONS = {
    "pose": "scanner_mm = Rz Ry Rx (rotation_deg) @ diag(scale) @ template_mm + translation_mm",
    "warp": "a scan shows at scanner point y the template point p + d(p), p = pose^-1(y), "
    "d_c(p) = sum_k warp_mm[c][k] prod_a cos(pi k_a (p_a - lo_a) / (hi_a - lo_a)), warp_box_mm",
    "iron": "patients: positive chi and R2* of planted regions times effect_factor",
    "effect": "patients' effect per kind: scale multiplies positive chi and R2* by 1 + size; "
    "offset adds size ppm (and r2s_per_ppm * size 1/s); gradient adds a zero-mean "
    "posterior-to-anterior ramp of size ppm across each planted region",
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
    effect_kind: str = "scale",
    effect_ppm: float | None = None,
    effect_sd: float | None = None,
    r2s_per_ppm: float = R2S_PER_PPM,
    variability: str = "demo",
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
        ``1 + iron_effect * u``, ``u ~ U(0.6, 1.4)`` per patient (``effect_kind="scale"``).
    effect_kind : {"scale", "offset", "gradient"}
        ``offset`` adds ``effect_ppm * u`` ppm to the planted regions' susceptibility (and
        ``r2s_per_ppm`` times that to R2*); ``gradient`` adds a zero-mean posterior-to-anterior
        ramp of ``effect_ppm * u`` ppm inside each planted region, leaving its mean unchanged.
    effect_ppm : float, optional
        Size of an ``offset`` or ``gradient`` effect in ppm.
    effect_sd : float, optional
        Instead of ``effect_ppm``: the size in units of the between-participant SD of
        susceptibility in the planted regions (averaged over them).
    r2s_per_ppm : float
        R2* change (1/s) per ppm of susceptibility change.
    variability : {"demo", "realistic"}
        ``demo``: small between-participant differences and strong noise (the quick demo).
        ``realistic``: about 15 % (SD) regional susceptibility and 8 % R2* variability, left-right
        correlation, ageing of putamen and pallidum after 40, background fields and R2* bias,
        noise 0.004 ppm and 0.8 1/s per voxel (a cohort that tests the science).
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
    effect = _effect(
        effect_kind, iron_effect, effect_ppm, effect_sd, r2s_per_ppm, variability, planted_regions
    )
    settings = {
        "seed": seed,
        "n_participants": n_participants,
        "iron_effect": iron_effect,
        "effect": effect,
        "variability": variability,
        "planted_regions": list(planted_regions),
        "gre_voxel_mm": list(gre_voxel_mm),
        "t1w_grid": t1w_grid,
        "resolution": resolution,
        "sessions": sessions,
    }
    labels = _check_settings(settings)
    _prepare_out_dir(out_dir, truth_dir, overwrite)
    phantom = build_phantom(float(resolution))
    names = dict(zip(settings["planted_regions"], labels, strict=True))
    planted = locate_regions(phantom.atlas, phantom.seg > 0, phantom.affine, names, names)
    table = participants_table(n_participants, seed)
    truth = _simulate_cohort(out_dir, table, phantom, planted, settings)
    write_dataset_files(out_dir, table)
    truth_dir.mkdir(parents=True, exist_ok=True)
    box = [phantom.head.min(0).tolist(), phantom.head.max(0).tolist()]
    settings = {**settings, "effect": settings["effect"].to_dict()}
    record = {"bids_dir": str(out_dir), "settings": settings, "warp_box_mm": box}
    write_json(
        truth_dir / "truth.json", {**record, "conventions": CONVENTIONS, "participants": truth}
    )
    return DemoInfo(out_dir, truth_dir / "truth.json", table)


def _simulate_cohort(out_dir: Path, table, phantom, planted, settings: dict) -> list[dict]:
    """Simulate and write every participant; return their ground-truth records."""
    children = np.random.SeedSequence(settings["seed"]).spawn(len(table))
    truth, pending = [], []
    with ThreadPoolExecutor(max_workers=1) as writer:  # gzip runs beside the next participant
        for i, (row, child) in enumerate(zip(table.itertuples(index=False), children, strict=True)):
            on_gre = {"gre": True, "separate": False}.get(settings["t1w_grid"], i % 2 == 0)
            rng = np.random.default_rng(child)
            scans, record = simulate_participant(row, rng, phantom, planted, settings, on_gre)
            for future in pending:  # at most one participant waits in memory
                future.result()
            pending = [writer.submit(save_nifti, *item) for item in scan_files(out_dir, row, scans)]
            truth.append(record)
            LOGGER.info("made %s (%s)", row.participant_id, row.group)
        for future in pending:
            future.result()
    return truth


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
        "variability": s["variability"] in VARIABILITY,
        "gre_voxel_mm": len(s["gre_voxel_mm"]) == 3 and min(s["gre_voxel_mm"]) > 0,
    }
    for name, good in checks.items():
        if not good:
            raise UsageError(f"invalid {name} {s[name]!r}; see bids_qnet-demo --help")
    if unknown or not s["planted_regions"]:
        raise UsageError(f"planted regions {unknown} are not in the atlas; try {', '.join(NUCLEI)}")
    return [atlas[r] for r in s["planted_regions"]]


def _effect(kind, iron_effect, ppm, sd_units, r2s_per_ppm, variability, regions) -> Effect:
    """Turn the effect options into an `Effect` (sizes in SD units converted to ppm)."""
    if kind not in EFFECT_KINDS:
        raise UsageError(f"invalid effect_kind {kind!r}; one of {', '.join(EFFECT_KINDS)}")
    if kind == "scale":
        if ppm is not None or sd_units is not None:
            raise UsageError("a scale effect takes --iron-effect, not --effect-ppm/--effect-sd")
        return Effect("scale", float(iron_effect), float(r2s_per_ppm))
    if (ppm is None) == (sd_units is None):
        raise UsageError(f"an {kind} effect needs exactly one of --effect-ppm and --effect-sd")
    if ppm is None:
        ppm = float(sd_units) * planted_sd(regions, variability)
    return Effect(kind, float(ppm), float(r2s_per_ppm))


def planted_sd(regions: Sequence[str], variability: str) -> float:
    """Return the mean between-participant SD (ppm) of susceptibility in some regions.

    Parameters
    ----------
    regions : sequence of str
        Atlas region names (nuclei of the phantom; other regions count as grey matter).
    variability : {"demo", "realistic"}
        The variability model.

    Returns
    -------
    float
        The SD of the regional value, before ageing, averaged over ``regions``.
    """
    if variability == "demo":
        return 0.006
    return float(np.mean(regional_sd(base_susceptibility(regions))))


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
