"""Who is in the demo and what each participant's scans look like.

Each consecutive pair of participants is one control (HC) and one patient (HH). A participant's
random stream draws tissue values, the patient effect and one pose per session, then the noise.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from bids_qnet.demo.acquisition import draw_pose, simulate_scan
from bids_qnet.demo.effects import Effect, PlantedRegion
from bids_qnet.demo.phantom import (
    SEGMENTS,
    Phantom,
    realistic_regional_values,
    regional_values,
    smooth_field,
    template_maps,
)

#: Per-voxel noise of each variability model: chi (ppm), R2* (1/s), T1w (fraction of WM).
NOISE = {
    "demo": {"Chimap": 0.01, "R2starmap": 1.5, "T1w": 0.02},
    "realistic": {"Chimap": 0.004, "R2starmap": 0.8, "T1w": 0.02},
}
#: Realistic cohorts: SD of the residual background field (ppm) and of the R2* bias (relative).
BACKGROUND_PPM, R2S_BIAS = 0.004, 0.03


def participants_table(n: int, seed: int) -> pd.DataFrame:
    """Draw the ``participants.tsv`` table.

    Parameters
    ----------
    n : int
        Number of participants; each pair is one HC and one HH, and a larger ``n`` keeps the
        first ones.
    seed : int
        Random seed.

    Returns
    -------
    pandas.DataFrame
        Columns ``participant_id``, ``group``, ``age`` (30 to 75) and ``sex``.
    """
    rows, width = [], max(2, len(str(n)))
    for i in range(n):
        flip = np.random.default_rng([seed, 1, i // 2]).integers(2)  # HC/HH order within a pair
        rng = np.random.default_rng([seed, 2, i])
        group, age, sex = ("HC", "HH")[(i + flip) % 2], rng.integers(30, 76), rng.choice(["M", "F"])
        rows.append(
            {
                "participant_id": f"sub-{i + 1:0{width}d}",
                "group": group,
                "age": int(age),
                "sex": str(sex),
            }
        )
    return pd.DataFrame(rows)


def simulate_participant(
    row,
    rng: np.random.Generator,
    phantom: Phantom,
    planted: list[PlantedRegion],
    settings: dict,
    t1w_on_gre: bool,
) -> tuple[dict, dict]:
    """Make one participant's scans and ground truth.

    Parameters
    ----------
    row : namedtuple
        The participant's row of `participants_table`.
    rng : numpy.random.Generator
        The participant's random stream.
    phantom : Phantom
        The template-space phantom.
    planted : list of PlantedRegion
        The regions with more iron in patients.
    settings : dict
        ``effect`` (an `Effect`), ``variability``, ``sessions`` and ``gre_voxel_mm`` of
        `make_demo_dataset`.
    t1w_on_gre : bool
        T1w on the GRE grid, else on its own grid.

    Returns
    -------
    scans : dict
        ``{session: {suffix: (array, affine)}}``; the session is ``""`` for a single session.
    record : dict
        The participant's ground truth: row, effect factor, T1w grid, regional values and poses.
    """
    realistic = settings["variability"] == "realistic"
    draw_values = realistic_regional_values if realistic else regional_values
    values = draw_values(rng, float(row.age))
    u = rng.uniform(0.6, 1.4)  # drawn for everyone: the group does not shift the random stream
    effect: Effect = settings["effect"]
    patient = row.group == "HH" and effect.size > 0
    n = settings["sessions"]
    poses = {f"ses-{s + 1:02d}" if n > 1 else "": draw_pose(rng) for s in range(n)}
    chi, r2s = template_maps(phantom, values, planted, effect if patient else None, u)
    if realistic:  # residual background field in chi, receive-bias-like field in R2*
        chi += smooth_field(phantom, rng, BACKGROUND_PPM)
        r2s *= np.exp(smooth_field(phantom, rng, R2S_BIAS))
    noise = NOISE[settings["variability"]]
    scans = {
        session: simulate_scan(
            phantom, chi, r2s, pose, settings["gre_voxel_mm"], t1w_on_gre, rng, noise
        )
        for session, pose in poses.items()
    }
    record = {
        **row._asdict(),
        "age": int(row.age),
        "effect_factor": 1.0 + effect.size * u if patient and effect.kind == "scale" else 1.0,
        "effect": {**effect.to_dict(), "size": effect.size * u if patient else 0.0},
        "t1w_grid": "gre" if t1w_on_gre else "separate",
        "regional_values": dict(zip(SEGMENTS[1:], values.tolist(), strict=True)),
        "scans": [{"session": s or None, **pose} for s, pose in poses.items()],
    }
    return scans, record
