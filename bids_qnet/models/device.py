"""Where the networks run: ``--device`` turned into a torch device."""

from __future__ import annotations

import os
import re

import torch

from bids_qnet.errors import UsageError


def resolve_device(device: str) -> torch.device:
    """Turn ``--device`` into a torch device.

    Parameters
    ----------
    device : str
        ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    Returns
    -------
    torch.device

    Raises
    ------
    UsageError
        For CUDA without a usable GPU, or an unknown device name.
    """
    name = str(device).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if re.fullmatch(r"cuda(:\d+)?", name):
        if not torch.cuda.is_available():
            raise UsageError(
                f"--device {device} asked for a GPU but torch sees no CUDA device "
                "(use --device cpu or auto; in a container pass --gpus all / --nv)"
            )
        chosen = torch.device(name)
        if chosen.index is not None and chosen.index >= torch.cuda.device_count():
            raise UsageError(
                f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) present"
            )
        return chosen
    raise UsageError(f"--device {device!r} is not one of auto, cpu, cuda")


def choose_device(device: str) -> tuple[torch.device, str]:
    """Resolve ``--device`` and say in words which device it gives and why.

    Parameters
    ----------
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    Returns
    -------
    torch.device
        As :func:`resolve_device`.
    str
        One sentence for the log, e.g. ``"cpu (--device auto: this torch build has no CUDA
        support)"``.
    """
    chosen = resolve_device(device)
    if chosen.type == "cuda":
        index = chosen.index if chosen.index is not None else torch.cuda.current_device()
        name = torch.cuda.get_device_name(index)
        return chosen, f"{chosen} ({name}, CUDA {torch.version.cuda}; --device {device})"
    if str(device).strip().lower() != "auto":
        return chosen, f"cpu (--device {device})"
    return chosen, f"cpu (--device auto: {cpu_reason()})"


def cpu_reason() -> str:
    """Return why torch sees no CUDA device, as far as it can be told."""
    if torch.version.cuda is None:
        return f"this torch build ({torch.__version__}) has no CUDA support"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return "CUDA_VISIBLE_DEVICES hides every GPU"
    return (
        f"torch {torch.__version__} (CUDA {torch.version.cuda}) finds no GPU or driver; "
        "in a container pass --gpus all (Docker) or --nv (Apptainer)"
    )
