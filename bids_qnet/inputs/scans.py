"""Find the participant-level outputs that the group level learns from."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bids_qnet.errors import InputDataError, NothingSelectedError, describe
from bids_qnet.outputs.derivatives import is_complete, sidecar_path
from bids_qnet.outputs.names import CROP_DESC, embeddings_glob, sibling

LOGGER = logging.getLogger(__name__)
RERUN = "rerun the participant level for {label} with --overwrite"
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
        """Memory-map the slice stack (read-only; never unpickled).

        Raises
        ------
        InputDataError
            The file cannot be read as a numeric ``(S, C, H, W)`` array (the scan is named).
        """
        return self._read(self.slices, 4, mmap_mode="r")

    def load_embeddings(self) -> np.ndarray:
        """Load the participant-level embeddings (never unpickled).

        Raises
        ------
        InputDataError
            The file cannot be read as a numeric ``(S, 512)`` array (the scan is named).
        """
        return self._read(self.embeddings, 2)

    def check(self) -> None:
        """Check both arrays' headers and sizes without reading their data.

        Raises
        ------
        InputDataError
            A truncated file, an object (pickled) array, a non-numeric or misshapen array, or
            embeddings that do not have one row per slice.
        """
        slices = self._read(self.slices, 4, mmap_mode="r")
        embeddings = self._read(self.embeddings, 2, mmap_mode="r")
        if embeddings.shape[0] != slices.shape[0]:
            raise InputDataError(
                f"{self.scan_id}: {self.embeddings.name} has {embeddings.shape[0]} rows for "
                f"{slices.shape[0]} slices; {RERUN.format(label=self.participant_id)}"
            )

    def _read(self, path: Path, ndim: int, mmap_mode: str | None = None) -> np.ndarray:
        try:
            array = np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
        except Exception as exc:  # truncated, pickled objects, not a .npy file
            raise InputDataError(
                f"{self.scan_id}: {path.name} cannot be read as an array ({describe(exc)}); "
                f"{RERUN.format(label=self.participant_id)}"
            ) from exc
        if (
            not isinstance(array, np.ndarray)
            or array.dtype.kind not in "biuf"
            or array.ndim != ndim
        ):
            kind = getattr(array, "dtype", type(array).__name__)
            raise InputDataError(
                f"{self.scan_id}: {path.name} holds a {getattr(array, 'shape', '?')} {kind} "
                f"array, not a numeric {ndim}D one; {RERUN.format(label=self.participant_id)}"
            )
        return array


def find_scans(output_dir: Path, crop: str = "bg", check: bool = True) -> list[Scan]:
    """Return the complete participant-level outputs in ``output_dir``, sorted by scan id.

    ``crop`` is the ``--crop`` the participant level ran with (``bg`` or ``full``); with
    ``check``, every scan's arrays are checked (:meth:`Scan.check`) before anything is trained.

    Raises
    ------
    NothingSelectedError
        When no participant has complete outputs (run the participant level first).
    InputDataError
        When a complete participant's arrays cannot be read (:meth:`Scan.check`).
    """
    scans = []
    for embeddings in sorted(output_dir.glob(embeddings_glob(crop))):
        match = SCAN_PATTERN.match(embeddings.name)
        slices = sibling(embeddings, "slices", ".npy")
        if not (match and is_complete(embeddings) and is_complete(slices)):
            LOGGER.warning("skipping incomplete participant-level output %s", embeddings)
            continue
        try:
            meta = json.loads(sidecar_path(embeddings).read_text()).get("bids_qnet", {})
        except (OSError, ValueError, AttributeError):
            meta = {}
        scan = Scan(
            f"sub-{match['sub']}",
            match["ses"],
            slices,
            embeddings,
            str(meta.get("SettingsFingerprint", "")),
            str(meta.get("Version", "")),
        )
        if check:
            scan.check()
        scans.append(scan)
    if not scans:
        raise NothingSelectedError(
            f"no complete participant-level outputs (desc-{CROP_DESC[crop]}) in {output_dir}: "
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
