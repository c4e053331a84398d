"""The one atomic writer: bytes, text, JSON, tables, figures and checkpoints, whole or not at all.

Every file bids_qnet writes goes through :func:`write_atomic`: the content is written to a
temporary file beside its final path (:func:`temporary_path`, the only temporary-name pattern),
flushed to disk and renamed into place, so an interrupted run never leaves a half-written file
under a final name. Write failures become the errors the user sees: :class:`OutputError` (exit
73) when the folder is not writable, :class:`WriteError` (exit 74) when the disk is full.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import io
import json
import math
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bids_qnet.errors import OutputError, QNetError, WriteError
from bids_qnet.outputs.integrity import file_sha256

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from matplotlib.figure import Figure

#: Start of every temporary file name: hidden, so BIDS tools and globs of outputs ignore it.
TMP_PREFIX = ".tmp-"
#: errno values that mean "not allowed to write here" (exit 73); any other write error is 74.
NOT_WRITABLE = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})
#: gzip level of the NIfTI derivatives: nibabel's default; float maps barely compress further
#: (level 6: 1 % smaller, 25 % slower).
GZIP_LEVEL = 1


def temporary_path(path: Path) -> Path:
    """Return a fresh temporary name beside ``path``, ending in ``path``'s own name.

    Hidden and unique per process and call; it keeps the real extension at its end, so writers
    that pick a format from the name (nibabel, matplotlib) write the right one.
    """
    path = Path(path)
    return path.with_name(f"{TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}-{path.name}")


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; flush it to disk and rename it onto ``path``.

    The data reach the disk (``fsync``) before the rename, so a crash or a full disk never leaves
    ``path`` holding part of the new content; on any error the temporary file is removed.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        yield tmp
        if tmp.is_file():
            with tmp.open("rb") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_atomic(path: Path, writer: Callable[[Path], Any]) -> Path:
    """Call ``writer(tmp_path)`` and move the result onto ``path`` atomically.

    Raises
    ------
    OutputError
        The folder is not writable (exit 73).
    WriteError
        Writing failed midway: disk full, file size limit, quota, I/O error (exit 74). Nothing
        is left at ``path`` that was not there before.
    """
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            writer(tmp)
    except QNetError:
        raise
    except OSError as exc:
        raise output_error(exc, path) from exc
    return path


def write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return write_atomic(path, lambda tmp: tmp.write_bytes(data))


def write_text(path: Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: Path, data: dict[str, Any]) -> Path:
    """Write ``data`` as indented JSON to ``path`` atomically (NaN and infinity as null)."""
    text = json.dumps(_finite(data), indent=2, allow_nan=False, default=str) + "\n"
    return write_text(path, text)


def write_table(path: Path, table: pd.DataFrame, **options: Any) -> Path:
    """Write a tab-separated table without its index atomically.

    ``options`` go to :meth:`pandas.DataFrame.to_csv` (``na_rep``, ``float_format``...).
    """
    return write_atomic(path, lambda tmp: table.to_csv(tmp, sep="\t", index=False, **options))


def write_figure(path: Path, figure: Figure, dpi: int) -> Path:
    """Render a Matplotlib figure (format from the suffix, PNG by default) and write it atomically.

    The figure is rendered in memory first: a drawing error leaves nothing on disk.
    """
    path = Path(path)
    buffer = io.BytesIO()
    figure.savefig(
        buffer, format=path.suffix.lstrip(".").lower() or "png", dpi=dpi, facecolor="white"
    )
    return write_bytes(path, buffer.getvalue())


def write_checkpoint(path: Path, state: dict) -> str:
    """``torch.save`` a state dict atomically and return the file's SHA-256.

    The checksum is recorded beside the file and checked before it is read back.

    Raises
    ------
    WriteError
        torch's zip writer failed (it reports a full disk as a ``RuntimeError``).
    OutputError
        The folder is not writable.
    """
    import torch

    path = Path(path)

    def write(tmp: Path) -> None:
        try:
            torch.save(state, tmp)
        except RuntimeError as exc:  # torch's zip writer reports a failed write this way
            raise WriteError(
                f"writing {path} failed ({str(exc).strip()[:120]}); the disk may be full or a "
                "file-size limit reached: free space and run the same command again"
            ) from exc

    write_atomic(path, write)
    return file_sha256(path)


def copy_file(source: Path, target: Path) -> None:
    """Copy ``source`` to ``target``, (de)compressing when only one of them ends in ``.gz``.

    The gzip header carries no name and no time, so the same content gives the same bytes.
    """
    source, target = Path(source), Path(target)
    packed, wanted = source.name.endswith(".gz"), target.name.endswith(".gz")
    if packed == wanted:
        shutil.copyfile(source, target)
        return
    opener = gzip.open if packed else open
    with opener(source, "rb") as src, target.open("wb") as raw:
        if packed:
            shutil.copyfileobj(src, raw, 1 << 22)
            return
        with gzip.GzipFile(
            filename="", mode="wb", compresslevel=GZIP_LEVEL, fileobj=raw, mtime=0
        ) as dst:
            shutil.copyfileobj(src, dst, 1 << 22)


def output_error(exc: OSError, path: Path) -> QNetError:
    """Turn an ``OSError`` raised while writing ``path`` into the error the user sees."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    if exc.errno in NOT_WRITABLE:
        return OutputError(
            f"cannot write {path}: {reason}; make the folder writable or choose another "
            "output_dir / --work-dir"
        )
    code = errno.errorcode.get(exc.errno, "") if exc.errno else ""
    return WriteError(
        f"writing {path} failed: {reason}{f' ({code})' if code else ''}; no partial file was "
        "kept: free disk space (or raise the quota/file-size limit) and run the same command again"
    )


@contextlib.contextmanager
def reported_write_errors(path: Path) -> Iterator[None]:
    """Report an ``OSError`` raised inside the block as :func:`write_atomic` reports its own."""
    try:
        yield
    except OSError as exc:
        if isinstance(exc, QNetError):
            raise
        raise output_error(exc, Path(exc.filename or path)) from exc


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete temporary files left under ``folder`` by a killed run; return what was removed.

    Call it only on folders that no other running job writes to (one participant's folder).
    """
    removed = []
    if Path(folder).is_dir():
        for tmp in Path(folder).rglob(f"{TMP_PREFIX}*"):
            if tmp.is_file():
                tmp.unlink(missing_ok=True)
                removed.append(tmp)
    return removed


def _finite(value: Any) -> Any:
    """Replace NaN/Inf (invalid JSON) by None, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
