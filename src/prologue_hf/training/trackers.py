"""Send the recipes' picture grids (stage-2 samples, stage-1 reconstructions) to the experiment trackers a
``transformers.Trainer`` reports to.

The Trainer's tracker integrations are callbacks (``report_to``); each keeps its own run handle, and transformers
offers no image call across them, so this module speaks to the ones with an image API: TensorBoard
(``SummaryWriter.add_image``), Weights & Biases (``wandb.Image``), MLflow (``mlflow.log_image``) and Trackio
(``trackio.Image``). Trackers come with ``pip install prologue-hf[tracking]`` (TensorBoard); the PNG files are written
whatever is installed.
"""

from __future__ import annotations

import numpy as np
import PIL.Image
from transformers.utils import logging

logger = logging.get_logger(__name__)


def log_image_to_trackers(callbacks: list, tag: str, image: PIL.Image.Image, step: int) -> list[str]:
    """Log ``image`` under ``tag`` at ``step`` to every initialised tracker callback in ``callbacks`` (a Trainer's
    ``callback_handler.callbacks``); returns the names of the trackers it went to. A tracker that fails is logged
    and skipped: a picture never stops training."""
    sent = []
    array = np.asarray(image.convert("RGB"))  # [H, W, 3] uint8
    for callback in callbacks:
        name = type(callback).__name__
        try:
            if name == "TensorBoardCallback" and getattr(callback, "tb_writer", None) is not None:
                callback.tb_writer.add_image(tag, array, step, dataformats="HWC")
                callback.tb_writer.flush()
            elif name == "WandbCallback" and getattr(callback, "_initialized", False):
                callback._wandb.log({tag: callback._wandb.Image(image), "train/global_step": step})
            elif name == "MLflowCallback" and getattr(callback, "_initialized", False):
                callback._ml_flow.log_image(array, f"{tag}/step-{step:08d}.png")
            elif name == "TrackioCallback" and getattr(callback, "_initialized", False):
                import trackio

                trackio.log({tag: trackio.Image(image)}, step=step)
            else:
                continue
        except Exception as error:  # noqa: BLE001 - any tracker failure: keep training, say so
            logger.warning(f"could not send {tag} to {name}: {error}")
            continue
        sent.append(name)
    return sent


__all__ = ["log_image_to_trackers"]
