"""Guarded output folders for the converter: it never writes into, over or inside its inputs, never replaces a
non-empty folder unless asked, and never leaves a half-written or mixed folder behind.

Everything is written into a fresh sibling folder that is renamed onto ``output_dir`` only once complete; the old
contents (with any stale ``pytorch_model.bin`` / ``model.safetensors.index.json``) are removed only after that.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path


def _relation(output: Path, source: Path) -> str | None:
    if output == source:
        return "is"
    if output in source.parents:
        return "contains"
    if source in output.parents:
        return "lies inside"
    return None


def check_output_dir(
    output_dir: str | os.PathLike, inputs: Mapping[str, str | os.PathLike | None], overwrite: bool = False
) -> Path:
    """Refuse an output folder that is, contains or lies inside one of ``inputs`` (``{description: path}``, files
    or folders; symlinks resolved), that exists as a file, or that is non-empty without ``overwrite``.

    Returns the output folder as an absolute path. Nothing is written.
    """
    output = Path(output_dir).expanduser().resolve()
    for name, path in inputs.items():
        if path is None:
            continue
        source = Path(path).expanduser().resolve()
        relation = _relation(output, source)
        if relation:
            raise ValueError(
                f"output_dir {output_dir} {relation} the input {name} {path}: the converter never writes into, over or "
                "inside the folders it reads; choose an output folder outside them"
            )
    if output.exists() and not output.is_dir():
        raise FileExistsError(f"output_dir {output_dir} exists and is not a folder")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise FileExistsError(
            f"output_dir {output_dir} is not empty; pass overwrite=True (--overwrite) to replace its contents"
        )
    return output


@contextmanager
def staged_output_dir(output_dir: str | os.PathLike) -> Iterator[Path]:
    """Yield a new empty sibling folder of ``output_dir``; when the block finishes it takes ``output_dir``'s place
    (an existing ``output_dir`` is moved aside first and deleted last). If the block raises, the sibling is deleted
    and ``output_dir`` is left as it was."""
    output = Path(output_dir).expanduser().resolve()
    output.parent.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex[:12]
    staging = output.parent / f".{output.name}.partial-{token}"
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old = output.parent / f".{output.name}.old-{token}"
    if output.exists():
        os.rename(output, old)
    try:
        os.rename(staging, output)
    except BaseException:
        if old.exists():
            os.rename(old, output)
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


__all__ = ["check_output_dir", "staged_output_dir"]
