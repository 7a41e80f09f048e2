"""``from_pretrained`` that refuses a checkpoint whose weights do not match its config.

transformers loads a folder whose ``config.json`` was deleted with the default config, and a ``config.json`` whose
layer count was edited with randomly initialised layers, behind a warning table only: a silent wrong model. Every
prologue-hf model loads through :class:`StrictLoadingMixin` instead, so that such a folder is an error naming what
is wrong; ``strict=False`` keeps transformers' behaviour.
"""

from __future__ import annotations

import os
import re

from safetensors import SafetensorError
from transformers.utils import CONFIG_NAME


def compact_keys(keys: list[str]) -> list[str]:
    """State-dict keys with everything after a layer index folded: ``encoder.layers.2.*``."""
    return sorted({re.sub(r"(layers\.\d+)\..*", r"\1.*", key) for key in keys})


class StrictLoadingMixin:
    """Put before ``PreTrainedModel`` in the bases. ``_strict_loading_fields`` names the config fields quoted in the
    error (the ones an edit would have changed); ``_strict_loading_ignored_unexpected`` lists regexes of checkpoint
    keys that a class may drop on purpose (a base model loaded from a checkpoint with a head)."""

    _strict_loading_fields: tuple[str, ...] = ("num_hidden_layers",)
    _strict_loading_ignored_unexpected: tuple[str, ...] = ()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *model_args, strict: bool = True, **kwargs):
        """``transformers.PreTrainedModel.from_pretrained`` that refuses a checkpoint which does not match its config.

        A local folder without ``config.json`` (and no ``config=`` given) is a ``FileNotFoundError`` naming the folder;
        missing or unexpected weights are a ``RuntimeError`` naming them (weights of another shape are already an error
        in transformers unless ``ignore_mismatched_sizes=True``); a truncated or corrupt weights file is an
        ``OSError`` naming the folder.

        Args:
            strict: ``False`` keeps transformers' behaviour: missing weights are initialised randomly, unexpected
                ones dropped, with the warning table (as ``torch.nn.Module.load_state_dict(strict=False)``).
            kwargs: ``transformers.PreTrainedModel.from_pretrained`` arguments.
        """
        subfolder = kwargs.get("subfolder")
        folder = os.path.join(str(pretrained_model_name_or_path), subfolder) if subfolder else str(pretrained_model_name_or_path)
        if kwargs.get("config") is None and os.path.isdir(folder) and not os.path.isfile(os.path.join(folder, CONFIG_NAME)):
            raise FileNotFoundError(
                f"{folder} has no {CONFIG_NAME}: without it the weights would be read into the default config; restore "
                f"the file or pass config=... ({cls.config_class.__name__}) explicitly"
            )
        output_loading_info = kwargs.pop("output_loading_info", False)
        try:
            model, info = super().from_pretrained(
                pretrained_model_name_or_path, *model_args, output_loading_info=True, **kwargs
            )
        except SafetensorError as error:  # its message names neither the folder nor the file
            raise OSError(f"a weights file in {folder} is truncated or corrupt: {error}") from error
        ignored = [re.compile(pattern) for pattern in cls._strict_loading_ignored_unexpected]
        unexpected_keys = [k for k in info["unexpected_keys"] if not any(p.fullmatch(k) for p in ignored)]
        missing, unexpected = compact_keys(info["missing_keys"]), compact_keys(unexpected_keys)
        if strict and (missing or unexpected):
            fields = ", ".join(f"{name}={getattr(model.config, name, None)}" for name in cls._strict_loading_fields)
            raise RuntimeError(
                f"the weights in {folder} do not match its {CONFIG_NAME} ({fields}): missing {missing[:6] or 'none'}"
                f"{' ...' if len(missing) > 6 else ''}, unexpected {unexpected[:6] or 'none'}"
                f"{' ...' if len(unexpected) > 6 else ''}. Was config.json edited or taken from another checkpoint? "
                "strict=False loads anyway (missing weights random, unexpected ones dropped)"
            )
        return (model, info) if output_loading_info else model
