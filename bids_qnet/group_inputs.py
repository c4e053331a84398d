"""Find the participant-level outputs that the group level learns from."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bids_qnet.derivatives import is_complete, sidecar_path
from bids_qnet.errors import InputDataError, NothingSelectedError

LOGGER = logging.getLogger(__name__)
SCAN_PATTERN = re.compile(r"^sub-(?P<sub>[A-Za-z0-9]+)(?:_ses-(?P<ses>[A-Za-z0-9]+))?_")


@dataclass(frozen=True)
class Scan:
    """One participant's (and session's) slice stack and embeddings in the derivatives.

    Attributes
    ----------
    participant_id : str
        ``sub-<label>``, the unit of cross-validation splits.
    session : str or None
        Session label, or None.
    slices, embeddings : Path
        The ``_slices.npy`` (S, C, H, W) and ``_embeddings.npy`` (S, 512) files.
    fingerprint : str
        Settings fingerprint recorded by the participant level.
    version : str
        bids_qnet version that wrote the outputs.
    """

    participant_id: str
    session: str | None
    slices: Path
    embeddings: Path
    fingerprint: str
    version: str = ""

    @property
    def scan_id(self) -> str:
        """Return ``sub-<label>[_ses-<label>]``."""
        return self.participant_id + (f"_ses-{self.session}" if self.session else "")

    def load_slices(self) -> np.ndarray:
        """Memory-map the slice stack (read-only)."""
        return np.load(self.slices, mmap_mode="r")

    def load_embeddings(self) -> np.ndarray:
        """Load the participant-level embeddings."""
        return np.load(self.embeddings)


def find_scans(output_dir: Path, crop_desc: str = "bgcrop") -> list[Scan]:
    """Return the complete participant-level outputs in ``output_dir``, sorted by scan id.

    Raises
    ------
    NothingSelectedError
        When no participant has complete outputs (run the participant level first).
    """
    scans = []
    pattern = f"sub-*/**/sub-*_desc-{crop_desc}_embeddings.npy"
    for embeddings in sorted(output_dir.glob(pattern)):
        match = SCAN_PATTERN.match(embeddings.name)
        slices = embeddings.with_name(embeddings.name.replace("_embeddings.npy", "_slices.npy"))
        if not (match and is_complete(embeddings) and is_complete(slices)):
            LOGGER.warning("skipping incomplete participant-level output %s", embeddings)
            continue
        meta = json.loads(sidecar_path(embeddings).read_text()).get("bids_qnet", {})
        scans.append(
            Scan(
                f"sub-{match['sub']}",
                match["ses"],
                slices,
                embeddings,
                meta.get("SettingsFingerprint", ""),
                meta.get("Version", ""),
            )
        )
    if not scans:
        raise NothingSelectedError(
            f"no complete participant-level outputs (desc-{crop_desc}) in {output_dir}: "
            "run the participant level first, with the same output_dir"
        )
    return scans


def check_consistent(scans: list[Scan]) -> None:
    """Refuse participant outputs made with different bids_qnet versions or settings.

    A classifier trained on a mix would learn the processing, not the participants; the
    fingerprint covers the version and every output-defining option (channels, crop, template,
    resolution, registration profile, embedding weights, image size).

    Raises
    ------
    InputDataError
        One line listing each version/fingerprint with its number of scans and a few of them.
    """
    groups: dict[tuple[str, str], list[str]] = {}
    for scan in scans:
        groups.setdefault((scan.version, scan.fingerprint), []).append(scan.scan_id)
    if len(groups) <= 1:
        return
    ordered = sorted(groups.items(), key=lambda item: -len(item[1]))
    described = "; ".join(
        f"version {version or '?'} settings {fingerprint or '?'}: {len(ids)} scan(s) "
        f"({', '.join(ids[:3])}{', ...' if len(ids) > 3 else ''})"
        for (version, fingerprint), ids in ordered
    )
    raise InputDataError(
        f"participant-level outputs were made with {len(groups)} different bids_qnet "
        f"versions/settings ({described}); rerun the participant level for the others with "
        "the same version and options and --overwrite, or move them out of output_dir"
    )
