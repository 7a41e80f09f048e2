"""The ADM evaluator's ``.npz`` sample format, written and read in bounded memory.

ADM (Dhariwal & Nichol 2021, ``guided-diffusion/evaluations``) reads ``arr_0``: ``uint8`` images ``[N, H, W, 3]``
(NHWC, RGB). Class-conditional sample files also carry ``arr_1``: ``int64`` labels ``[N]``; the reference batches
(``VIRTUAL_imagenet256_labeled.npz``) add precomputed Inception statistics ``mu`` / ``sigma``.

50k samples at 256x256 are ~9.8 GB, so the writer streams shards into the zip entry and the reader yields batches,
never holding the whole array.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

ADM_IMAGES_KEY = "arr_0"
ADM_LABELS_KEY = "arr_1"


def write_npz_streaming(
    path: str | os.PathLike, arrays: dict[str, tuple[tuple[int, ...], np.dtype, Iterable[np.ndarray]]]
) -> Path:
    """Write an uncompressed ``.npz`` whose arrays arrive in chunks along axis 0.

    Args:
        path: output file; written to ``path + ".tmp"`` and renamed, so a crash never leaves a partial file.
        arrays: name -> ``(shape, dtype, chunks)``; the chunks concatenated along axis 0 must have exactly ``shape``.

    The result loads with ``np.load`` like one written by ``np.savez``.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, (shape, dtype, chunks) in arrays.items():
            dtype = np.dtype(dtype)
            header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(shape)}
            written = 0
            with archive.open(f"{name}.npy", "w", force_zip64=True) as handle:
                np.lib.format.write_array_header_1_0(handle, header)
                for chunk in chunks:
                    chunk = np.ascontiguousarray(chunk, dtype=dtype)
                    if chunk.shape[1:] != tuple(shape[1:]):
                        raise ValueError(f"{name}: chunk shape {chunk.shape} does not fit array shape {tuple(shape)}")
                    handle.write(chunk.tobytes())
                    written += chunk.shape[0]
            if written != shape[0]:
                raise ValueError(f"{name}: chunks hold {written} rows, the declared shape has {shape[0]}")
    os.replace(tmp, path)
    return path


def _open_npy(archive: zipfile.ZipFile, key: str):
    name = f"{key}.npy"
    if name not in archive.namelist():
        raise KeyError(f"array {key!r} is not in the .npz (has {[n[:-4] for n in archive.namelist()]})")
    handle = archive.open(name)
    version = np.lib.format.read_magic(handle)
    reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran_order, dtype = reader(handle)
    if fortran_order:
        handle.close()
        raise ValueError(f"array {key!r} is stored in Fortran order; ADM files are C order")
    return handle, shape, dtype


def npz_array_info(path: str | os.PathLike, key: str = ADM_IMAGES_KEY) -> tuple[tuple[int, ...], np.dtype]:
    """``(shape, dtype)`` of one array of an ``.npz`` without reading its data."""
    with zipfile.ZipFile(path) as archive:
        handle, shape, dtype = _open_npy(archive, key)
        handle.close()
    return shape, dtype


def check_adm_images(path: str | os.PathLike) -> tuple[int, int, int]:
    """Raise ``ValueError`` unless ``arr_0`` is ``uint8`` ``[N, H, W, 3]``; return ``(N, H, W)``."""
    shape, dtype = npz_array_info(path, ADM_IMAGES_KEY)
    if dtype != np.uint8 or len(shape) != 4 or shape[-1] != 3:
        raise ValueError(f"{path}: arr_0 must be uint8 [N, H, W, 3] (ADM layout), got {dtype} {list(shape)}")
    return shape[0], shape[1], shape[2]


def iter_npz_batches(
    path: str | os.PathLike, key: str = ADM_IMAGES_KEY, batch_size: int = 100, limit: int | None = None
) -> Iterator[np.ndarray]:
    """Yield ``[<=batch_size, ...]`` chunks of one array of an ``.npz`` (first ``limit`` rows if given)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    with zipfile.ZipFile(path) as archive:
        handle, shape, dtype = _open_npy(archive, key)
        with handle:
            total = shape[0] if limit is None else min(limit, shape[0])
            row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
            for start in range(0, total, batch_size):
                rows = min(batch_size, total - start)
                data = handle.read(rows * row_bytes)
                if len(data) != rows * row_bytes:
                    raise ValueError(f"{path}: {key} ends early (truncated file?)")
                yield np.frombuffer(data, dtype=dtype).reshape(rows, *shape[1:])


def load_npz_array(path: str | os.PathLike, key: str) -> np.ndarray | None:
    """One (small) array of an ``.npz``, or None when absent (e.g. ``mu`` / ``sigma`` of a reference batch)."""
    with np.load(path) as data:
        return np.asarray(data[key]) if key in data.files else None


__all__ = [
    "ADM_IMAGES_KEY",
    "ADM_LABELS_KEY",
    "check_adm_images",
    "iter_npz_batches",
    "load_npz_array",
    "npz_array_info",
    "write_npz_streaming",
]
