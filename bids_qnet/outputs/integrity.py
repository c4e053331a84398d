"""Is a file whole and unchanged? Checksums, and checks for writers that hide a failed write.

ITK writes through C++ and does not report a full disk or a file-size limit to Python:
``ants.image_write`` prints an error and returns; ``antsRegistration`` catches the HDF5 error
and returns success. Either leaves a truncated file under the final name, and reading a
truncated transform crashes the process (segmentation fault). These checks look at the bytes
only, so they are safe to run on anything.
"""

from __future__ import annotations

import gzip
import hashlib
import struct
from pathlib import Path

from bids_qnet.errors import WriteError

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_FULL_DISK_HINT = (
    "the disk may be full or a file-size limit reached: free space and run the same command again"
)


def file_sha256(path: Path) -> str:
    """Return the SHA-256 hex digest of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_gzip_whole(path: Path, name: Path | None = None) -> None:
    """Raise :class:`WriteError` unless a gzip file (``.nii.gz``) decompresses to its end.

    ``name``: the file to name in the message, when ``path`` is its temporary copy.
    """
    try:
        with gzip.open(path, "rb") as handle:
            while handle.read(1 << 22):
                pass
    except (OSError, EOFError) as exc:
        raise WriteError(
            f"{name or path} was written incompletely ({exc}); {_FULL_DISK_HINT}"
        ) from exc


def check_nifti_whole(path: Path, name: Path | None = None) -> None:
    """Raise :class:`WriteError` unless a ``.nii`` holds every voxel its header declares.

    ``name``: the file to name in the message, when ``path`` is its temporary copy.
    """
    import nibabel as nib
    import numpy as np

    try:
        data = nib.load(path).dataobj  # the header of a loaded image no longer has the offset
        expected = int(data.offset) + int(np.prod(data.shape, dtype=np.int64)) * data.dtype.itemsize
        size = Path(path).stat().st_size
    except (OSError, ValueError, nib.filebasedimages.ImageFileError) as exc:
        raise WriteError(
            f"{name or path} was written incompletely ({exc}); {_FULL_DISK_HINT}"
        ) from exc
    if size < expected:
        raise WriteError(
            f"{name or path} was written incompletely ({size} of {expected} bytes); "
            f"{_FULL_DISK_HINT}"
        )


def hdf5_end_of_file(path: Path) -> int:
    """Return the end-of-file address an HDF5 file's superblock records (its full size).

    Raises
    ------
    ValueError
        The file does not start with an HDF5 superblock of a known version (0 to 3).
    """
    with Path(path).open("rb") as handle:
        head = handle.read(64)
    if len(head) < 16 or head[:8] != HDF5_SIGNATURE or head[8] > 3:
        raise ValueError(f"{path} has no HDF5 superblock")
    version = head[8]
    # Version 0/1: after 8 bytes of signature, 8 one-byte fields, two 2-byte and a 4-byte
    # field (version 1 adds 4 bytes), then base, free-space (or extension) and end-of-file
    # addresses. Version 2/3: signature, version, sizes of offsets/lengths, flags, then the
    # same three addresses.
    size_of_offsets = head[13] if version < 2 else head[9]
    first_address = (24 if version == 0 else 28) if version < 2 else 12
    fmt = {4: "<I", 8: "<Q"}.get(size_of_offsets)
    if fmt is None or len(head) < first_address + 3 * size_of_offsets:
        raise ValueError(f"{path} has an HDF5 superblock with offsets of {size_of_offsets} bytes")
    base, _, end = struct.unpack_from("<" + fmt[1] * 3, head, first_address)
    return base + end


def check_hdf5_whole(path: Path) -> None:
    """Raise :class:`WriteError` unless an HDF5 file (``.h5``) is as long as it says it is."""
    try:
        expected = hdf5_end_of_file(path)
    except (OSError, ValueError) as exc:
        raise WriteError(f"{path} is not a readable HDF5 file ({exc}); {_FULL_DISK_HINT}") from exc
    size = Path(path).stat().st_size
    if size < expected:
        raise WriteError(
            f"{path} was written incompletely ({size} of {expected} bytes); {_FULL_DISK_HINT}"
        )
