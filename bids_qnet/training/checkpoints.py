"""Reading checkpoints back: state dicts only, checked against the SHA-256 recorded at saving.

Checkpoints are written by :func:`bids_qnet.outputs.atomic.write_checkpoint`, which returns the
checksum that ``done.json`` and the model card record.
"""

from __future__ import annotations

from pathlib import Path

import torch

from bids_qnet.errors import InputDataError, MissingInputError
from bids_qnet.outputs.integrity import file_sha256


def load_state(path: Path, sha256: str | None = None) -> dict:
    """Read a state dict back (``weights_only=True``, onto the CPU).

    Parameters
    ----------
    path : Path
        The ``.pt`` file.
    sha256 : str, optional
        The checksum recorded when it was saved; when given, a file that differs is refused
        before it is unpickled.

    Raises
    ------
    MissingInputError
        The file does not exist.
    InputDataError
        The checksum differs, or the file is not a plain state dict (``weights_only=True``
        refuses pickled code).
    """
    if sha256 is not None and Path(path).is_file():
        actual = file_sha256(Path(path))
        if actual != sha256:
            raise InputDataError(
                f"{path} was modified after it was saved: its SHA-256 {actual[:16]}... differs "
                f"from the recorded {sha256[:16]}...; refusing to load it (retrain, or restore "
                "the original file)"
            )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise MissingInputError(f"stage-1 weights {path} do not exist") from exc
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means an unusable file
        # torch's own message advises weights_only=False: show only the line saying why
        noise = ("Weights only load failed", "Please file an issue", "Check the documentation")
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        reason = next((ln for ln in lines if not ln.startswith(noise)), type(exc).__name__)
        raise InputDataError(
            f"{path} cannot be read as a state dict ({reason[:200]}); refusing it: a bids_qnet "
            "checkpoint holds tensors only, so use checkpoints written by bids_qnet"
        ) from exc
    if not isinstance(state, dict):
        raise InputDataError(f"{path} does not hold a state dict")
    return dict(state)
