"""Checks that the process group accelerate set up is the one the launch asked for.

``accelerate launch`` / ``torchrun`` start the processes and export their environment (``WORLD_SIZE``,
``ACCELERATE_USE_FSDP``, ...); accelerate then decides, per process, what to build from it and the training arguments.
Two of its decisions are silent (accelerate 1.x, found on a CPU-only machine):

* with no GPU and ``use_cpu`` off, a multi-process launch gets no process group at all
  (``DistributedType.NO``): every process trains its own copy of the model on its own data and writes the same
  ``output_dir``;
* with ``use_cpu`` on, an FSDP or DeepSpeed launch config becomes plain multi-CPU data parallelism (``MULTI_CPU``):
  correct, but not sharded.
"""

from __future__ import annotations

import os

from transformers import TrainingArguments
from transformers.utils import logging

logger = logging.get_logger(__name__)


def accelerate_requested(kind: str) -> bool:
    """Whether the launch asked accelerate for ``kind`` (``"FSDP"`` or ``"DEEPSPEED"``: ``ACCELERATE_USE_<kind>``)."""
    return os.environ.get(f"ACCELERATE_USE_{kind}", "false").strip().lower() in ("1", "true", "yes")


def check_distributed_launch(args: TrainingArguments) -> None:
    """Raise when the launch started ``WORLD_SIZE > 1`` processes but ``args`` set up a single-process run; warn
    when the launch asked for FSDP / DeepSpeed and accelerate built something else. Called by the Prologue trainers.
    """
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    distributed_type = args.distributed_state.distributed_type if args.distributed_state is not None else None
    kind = getattr(distributed_type, "value", str(distributed_type))
    if launched > 1 and args.world_size == 1:
        raise RuntimeError(
            f"the launcher started {launched} processes (WORLD_SIZE={launched}) but accelerate set up no process group "
            f"(distributed type {kind}): each process would train its own copy and write the same output_dir. On a "
            "machine without GPUs pass use_cpu=True (training argument `--use_cpu true`) so that the processes join "
            "a gloo group; otherwise check that the launcher sees the GPUs (CUDA_VISIBLE_DEVICES)."
        )
    for wanted in ("FSDP", "DEEPSPEED"):
        if accelerate_requested(wanted) and kind != wanted:
            logger.warning(
                f"the launch asked for {wanted} (ACCELERATE_USE_{wanted}=true) but accelerate set up {kind}: "
                f"parameters are not sharded. With use_cpu=True accelerate runs {wanted} configs as plain data parallelism on CPU; "
                f"{wanted} needs GPUs."
            )


__all__ = ["accelerate_requested", "check_distributed_launch"]
