"""ProloguePostModel: a prologue encoder + Prob-STE quantizer over a frozen visual tokenizer (paper section 2.3).

Data flow::

    pixels [B,C,S,S] in [-1,1] ─► frozen adapter.tokenize (no grad) ─► visual_ids [B,N], features [B,N,D]
        features (or patchified pixels) ─► Linear ─► [N grid tokens ; K learnable queries] ─► ViT (bidirectional)
            h[:, N:] ─► ProbSTEQuantizer (softmax(cos/tau), hard forward) ─► prologue_ids [B,K], p~ [B,K,P]
    visual_ids ─► frozen adapter.decode ─► pixels                (reconstruction untouched by construction)

Only the prologue encoder and quantizer are parameters of this model (and of its checkpoint). The frozen tokenizer
is held *beside* the module tree: it is not in ``state_dict``, ``parameters()`` or ``train()``, so an optimizer, DDP
or ``Trainer`` never sees it, while ``.to(...)`` / ``.half()`` move it along (``_apply``). ``save_pretrained``
records its identity and location (or stores a copy in ``visual_tokenizer/`` when it has no location);
``from_pretrained`` reloads it from there and checks its weights' SHA-256.

The model has the interface :class:`~prologue_hf.ProloguePipeline` and the pretokenizer use on a
:class:`~prologue_hf.PrologueTokenizerModel`: ``config.{num_prologue_tokens, visual_codebook_size,
prologue_codebook_size, num_visual_tokens, image_size}``, ``encode(pixel_values)`` with ``prologue_ids`` /
``visual_ids`` / ``prologue_soft_onehot``, ``decode(visual_ids).pixel_values``, ``preprocess``, ``postprocess``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.utils import logging

from ..vocabulary import check_compatible
from .configuration_prologue_post import ProloguePostConfig
from .modeling_prologue_tokenizer import (
    PrologueTokenizerDecoderOutput,
    PrologueTokenizerEncoderOutput,
    PrologueTokenizerModel,
    PrologueTokenizerPreTrainedModel,
    PrologueViTEncoder,
    patchify,
)
from .quantizers import ProbSTEQuantizer
from .strict_loading import StrictLoadingMixin
from .visual_tokenizers import (
    VisualTokenizerAdapter,
    adapter_for_model,
    check_identity,
    load_visual_tokenizer,
)

logger = logging.get_logger(__name__)

# Where save_pretrained stores a copy of the frozen tokenizer when it has no repo id / folder of its own.
VISUAL_TOKENIZER_SUBFOLDER = "visual_tokenizer"
# from_pretrained keyword arguments that also apply to loading the frozen tokenizer from the Hub.
_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "proxies")


@dataclass
class ProloguePostEncoderOutput(PrologueTokenizerEncoderOutput):
    """Output of :meth:`ProloguePostModel.encode`: the tokenizer encoder-output fields, filled as follows.

    Attributes:
        visual_ids: ``[B, N]`` ids of the frozen tokenizer (raster order).
        prologue_ids: ``[B, K]``; prologue_soft_onehot: ``[B, K, P]`` Prob-STE ``p~``; prologue_quantized,
            prologue_features: ``[B, K, codebook_dim]``; prologue_logits: ``[B, K, P]`` cosine similarities.
        encoder_hidden_states: ``[B, N_in + K, hidden]`` prologue-encoder output (grid / patch tokens first).
        quantizer_loss: scalar zero (the visual quantizer is frozen; Prob-STE has no loss of its own).
        tokenizer_features: ``[B, N, D]`` frozen encoder output the prologue encoder read (``"features"`` input).
        visual_quantized, visual_features, visual_logits: None (the frozen tokenizer's internals are not exposed).
    """

    tokenizer_features: torch.Tensor | None = None


class ProloguePostPreTrainedModel(StrictLoadingMixin, PreTrainedModel):
    config_class = ProloguePostConfig
    config: ProloguePostConfig
    base_model_prefix = "prologue_post"
    main_input_name = "pixel_values"
    supports_gradient_checkpointing = True
    _no_split_modules = ["ViTBlock"]
    # Same blocks, same init as the tokenizer (trunc-normal 0.02 Linears and queries, unit norms, gates at
    # layer_scale_init): one init scheme per idea.
    _init_weights = PrologueTokenizerPreTrainedModel._init_weights


class ProloguePostModel(ProloguePostPreTrainedModel):
    """Prologue-Post: prologue tokens learned on top of a frozen visual tokenizer.

    Args:
        config: :class:`ProloguePostConfig` (build it from the tokenizer with :meth:`from_visual_tokenizer`).
        visual_tokenizer: the frozen tokenizer, a :class:`VisualTokenizerAdapter` or a model an adapter exists for
            (``diffusers.VQModel``, ``JanusVQVAE``, ``Emu3VQVAE``, ``ChameleonVQVAE``, ``PrologueTokenizerModel``).

    >>> from prologue_hf.testing import tiny_tokenizer
    >>> post = ProloguePostModel.from_visual_tokenizer(tiny_tokenizer(num_prologue_tokens=0), hidden_size=32,
    ...     num_hidden_layers=1, num_attention_heads=2, rope_axes_dim=[4, 6, 6], num_prologue_tokens=4,
    ...     prologue_codebook_size=16, codebook_dim=8)
    >>> out = post.encode(torch.zeros(2, 3, 32, 32))
    >>> out.prologue_ids.shape, out.visual_ids.shape
    (torch.Size([2, 4]), torch.Size([2, 16]))
    >>> post.decode(out.visual_ids).pixel_values.shape
    torch.Size([2, 3, 32, 32])
    """

    def __init__(self, config: ProloguePostConfig, visual_tokenizer: VisualTokenizerAdapter | nn.Module | None = None):
        super().__init__(config)
        self.prologue_encoder = PrologueViTEncoder(config.encoder_config())
        self.prologue_quantizer = ProbSTEQuantizer(
            config.hidden_size, config.codebook_dim, config.prologue_codebook_size, config.prologue_temperature
        )
        self.post_init()
        self._visual_tokenizer: VisualTokenizerAdapter | None = None
        if visual_tokenizer is not None:
            self.set_visual_tokenizer(visual_tokenizer)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_visual_tokenizer(
        cls, visual_tokenizer: VisualTokenizerAdapter | nn.Module, **config_kwargs
    ) -> ProloguePostModel:
        """A fresh (randomly initialised) Prologue-Post model over ``visual_tokenizer``; the visual fields of the
        config come from the adapter, ``config_kwargs`` set the rest (K, codebook, encoder size, ``encoder_input``).
        """
        adapter = adapter_for_model(visual_tokenizer)
        fixed = {"visual_tokenizer", "visual_tokenizer_name_or_path", "visual_tokenizer_subfolder", "image_size",
                 "num_channels", "visual_codebook_size", "visual_grid_size", "visual_feature_dim"}
        if fixed & set(config_kwargs):
            raise ValueError(f"{sorted(fixed & set(config_kwargs))} come from the visual tokenizer; do not pass them")
        h, w = adapter.grid_shape
        if h != w:
            raise ValueError(f"Prologue-Post needs a square visual grid, the tokenizer gives {h}x{w}")
        config = ProloguePostConfig(
            visual_tokenizer=adapter.identity(),
            visual_tokenizer_name_or_path=adapter.name_or_path,
            visual_tokenizer_subfolder=adapter.subfolder,
            image_size=adapter.image_size,
            num_channels=adapter.num_channels,
            visual_codebook_size=adapter.codebook_size,
            visual_grid_size=h,
            visual_feature_dim=adapter.feature_dim,
            **config_kwargs,
        )
        return cls(config, visual_tokenizer=adapter)

    # ------------------------------------------------------------------ the frozen tokenizer
    @property
    def visual_tokenizer(self) -> VisualTokenizerAdapter:
        """The frozen :class:`VisualTokenizerAdapter` (not a submodule: see the module docstring)."""
        adapter = self.__dict__.get("_visual_tokenizer")
        if adapter is None:
            raise RuntimeError(
                "no frozen visual tokenizer is attached: load with ProloguePostModel.from_pretrained, build with "
                "from_visual_tokenizer, or call set_visual_tokenizer(adapter)"
            )
        return adapter

    @property
    def has_visual_tokenizer(self) -> bool:
        return self.__dict__.get("_visual_tokenizer") is not None

    def set_visual_tokenizer(self, visual_tokenizer: VisualTokenizerAdapter | nn.Module, verify: bool = True) -> None:
        """Attach the frozen tokenizer after checking it matches the config (grid, codebook, features, image size,
        and, when ``verify`` and the config records one, the weights' SHA-256)."""
        adapter = adapter_for_model(visual_tokenizer)
        self._check_adapter_shapes(adapter)
        if self.config.visual_tokenizer is None:
            self.config.visual_tokenizer = adapter.identity()
        else:
            check_identity(adapter, self.config.visual_tokenizer, verify_weights=verify)
        self._visual_tokenizer = adapter

    def _check_adapter_shapes(self, adapter: VisualTokenizerAdapter) -> None:
        c = self.config
        h, w = adapter.grid_shape
        expected = {
            "codebook_size": (adapter.codebook_size, c.visual_codebook_size),
            "grid": (f"{h}x{w}", f"{c.visual_grid_size}x{c.visual_grid_size}"),
            "image_size": (adapter.image_size, c.image_size),
            "num_channels": (adapter.num_channels, c.num_channels),
        }
        if c.encoder_input == "features":
            expected["feature_dim"] = (adapter.feature_dim, c.visual_feature_dim)
        mismatched = {k: v for k, v in expected.items() if v[0] != v[1]}
        if mismatched:
            detail = "; ".join(f"{k}: tokenizer {a} vs config {b}" for k, (a, b) in mismatched.items())
            raise ValueError(f"the visual tokenizer {type(adapter).__name__} does not match this ProloguePostConfig ({detail})")

    def _apply(self, fn, recurse: bool = True):
        # .to() / .cuda() / .half() also move the frozen tokenizer, which is deliberately not a submodule.
        super()._apply(fn, recurse)
        adapter = self.__dict__.get("_visual_tokenizer")
        if adapter is not None:
            adapter.model._apply(fn, recurse)
        return self

    def check_ar_config(self, ar_config) -> None:
        """Raise ``ValueError`` unless an AR with ``ar_config`` models this model's ids (V, N = grid**2, K, P):
        :func:`~prologue_hf.vocabulary.check_compatible` on this model's config."""
        check_compatible(self.config, ar_config)

    # ------------------------------------------------------------------ encode / decode
    def encode(self, pixel_values: torch.Tensor) -> ProloguePostEncoderOutput:
        """Tokenize images: frozen visual ids plus learned prologue ids.

        Args:
            pixel_values: ``[B, C, S, S]`` float images in ``[-1, 1]`` (the adapter maps them to its model's range).

        Returns:
            :class:`ProloguePostEncoderOutput`: ``visual_ids`` ``[B, N]``, ``prologue_ids`` ``[B, K]``,
            ``prologue_soft_onehot`` ``[B, K, P]`` (gradient reaches the prologue encoder only).
        """
        tokens = self.visual_tokenizer.tokenize(pixel_values)  # no grad: the visual pathway is frozen
        dtype = self.prologue_encoder.input_layer.weight.dtype
        if self.config.encoder_input == "features":
            inputs = tokens.features.to(self.device, dtype)  # [B, N, D]
        else:
            inputs = patchify(pixel_values.to(self.device, dtype), self.config.patch_size)  # [B, N_patches, p*p*C]
        hidden = self.prologue_encoder(inputs)  # [B, N_in + K, hidden]
        prologue = self.prologue_quantizer(hidden[:, inputs.shape[1] :])
        return ProloguePostEncoderOutput(
            visual_ids=tokens.visual_ids.to(self.device),
            prologue_ids=prologue.ids,
            prologue_soft_onehot=prologue.soft_onehot,
            prologue_quantized=prologue.quantized,
            prologue_features=prologue.normalized_features,
            prologue_logits=prologue.logits,
            encoder_hidden_states=hidden,
            quantizer_loss=prologue.loss,
            tokenizer_features=tokens.features,
        )

    def decode(self, visual_ids: torch.Tensor) -> PrologueTokenizerDecoderOutput:
        """Decode visual ids ``[B, N]`` with the frozen tokenizer -> ``pixel_values`` ``[B, C, S, S]`` in about
        ``[-1, 1]``; bit-identical to the adapter's (and so the wrapped model's own) decoding."""
        return PrologueTokenizerDecoderOutput(pixel_values=self.visual_tokenizer.decode(visual_ids))

    def forward(self, pixel_values: torch.Tensor) -> ProloguePostEncoderOutput:
        """The training forward is :meth:`encode`: the loss (``L_AR``) lives in the trainer."""
        return self.encode(pixel_values)

    preprocess = staticmethod(PrologueTokenizerModel.preprocess)
    postprocess = staticmethod(PrologueTokenizerModel.postprocess)
    codebook_usage = PrologueTokenizerModel.codebook_usage  # reads config.{visual,prologue}_codebook_size

    # ------------------------------------------------------------------ save / load
    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        *args,
        save_visual_tokenizer: bool | None = None,
        is_main_process: bool = True,
        **kwargs,
    ):
        """Save the prologue encoder + quantizer and the frozen tokenizer's identity and location.

        Args:
            save_visual_tokenizer: also store the frozen tokenizer's weights in ``visual_tokenizer/`` (with its own
                ``save_pretrained``). Default: only when it has no repo id / folder to reload from, or when it was
                itself loaded from a copy inside another checkpoint (so checkpoints stay self-contained when an old
                one is deleted). ``False`` with no location is an error.
        """
        config = self.config
        saved_location = (config.visual_tokenizer_name_or_path, config.visual_tokenizer_subfolder)
        adapter = self.__dict__.get("_visual_tokenizer")
        if adapter is not None:
            embed = save_visual_tokenizer
            if embed is None:
                embed = adapter.name_or_path is None or adapter.embedded_in_checkpoint
            if embed:
                if is_main_process:
                    adapter.save_pretrained(os.path.join(save_directory, VISUAL_TOKENIZER_SUBFOLDER))
                config.visual_tokenizer_name_or_path, config.visual_tokenizer_subfolder = None, VISUAL_TOKENIZER_SUBFOLDER
            elif adapter.name_or_path is None:
                raise ValueError(
                    "save_visual_tokenizer=False, but the frozen tokenizer has no repo id / folder to be reloaded from; "
                    "save it first (adapter.save_pretrained) or leave save_visual_tokenizer at its default"
                )
            else:
                config.visual_tokenizer_name_or_path = adapter.name_or_path
                config.visual_tokenizer_subfolder = adapter.subfolder
        elif save_visual_tokenizer:
            raise ValueError("save_visual_tokenizer=True but no frozen visual tokenizer is attached")
        try:
            return super().save_pretrained(save_directory, *args, is_main_process=is_main_process, **kwargs)
        finally:
            # the in-memory config keeps describing where *this* instance's tokenizer lives
            config.visual_tokenizer_name_or_path, config.visual_tokenizer_subfolder = saved_location

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *model_args,
        visual_tokenizer: VisualTokenizerAdapter | nn.Module | None = None,
        verify_visual_tokenizer: bool = True,
        **kwargs,
    ) -> ProloguePostModel:
        """Load the prologue encoder + quantizer, then reload the frozen tokenizer from its recorded location (a repo
        id, a local folder, or the checkpoint's ``visual_tokenizer/`` copy) and attach it.

        Args:
            visual_tokenizer: use this tokenizer instead of reloading it (e.g. when the recorded folder moved); it
                is checked against the saved identity like a reloaded one.
            verify_visual_tokenizer: a weights SHA-256 different from the saved one is an error (``False``: a
                warning).
            kwargs: ``transformers.PreTrainedModel.from_pretrained`` arguments; ``cache_dir``, ``token``,
                ``revision``, ``local_files_only``, ``force_download`` also apply to the tokenizer.
        """
        model = super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        if visual_tokenizer is None:
            # load_visual_tokenizer already checks the identity (shapes, config, weights SHA-256)
            adapter = model._load_visual_tokenizer(
                str(pretrained_model_name_or_path),
                kwargs.get("subfolder"),
                verify_visual_tokenizer,
                {k: kwargs[k] for k in _HUB_KWARGS if k in kwargs},
            )
            model._check_adapter_shapes(adapter)
            model._visual_tokenizer = adapter
        else:
            model.set_visual_tokenizer(visual_tokenizer, verify=verify_visual_tokenizer)
        if model.device.type != "meta":
            model.visual_tokenizer.to(model.device)
        return model

    def _load_visual_tokenizer(
        self, checkpoint: str, checkpoint_subfolder: str | None, verify: bool, hub_kwargs: dict
    ) -> VisualTokenizerAdapter:
        c = self.config
        if c.visual_tokenizer is None:
            raise ValueError(
                "this checkpoint records no visual tokenizer identity; pass visual_tokenizer=... to from_pretrained"
            )
        if c.visual_tokenizer_name_or_path is None:
            if not c.visual_tokenizer_subfolder:
                raise ValueError("this checkpoint records neither a location nor a stored copy of its visual tokenizer")
            source = checkpoint
            subfolder = "/".join(p for p in (checkpoint_subfolder, c.visual_tokenizer_subfolder) if p)
        else:
            source, subfolder = c.visual_tokenizer_name_or_path, c.visual_tokenizer_subfolder
        logger.info(f"loading the frozen visual tokenizer from {source!r} (subfolder {subfolder!r})")
        adapter = load_visual_tokenizer(c.visual_tokenizer, source, subfolder, verify=verify, **hub_kwargs)
        adapter.embedded_in_checkpoint = c.visual_tokenizer_name_or_path is None
        return adapter


__all__ = [
    "ProloguePostModel",
    "ProloguePostPreTrainedModel",
    "ProloguePostEncoderOutput",
    "VISUAL_TOKENIZER_SUBFOLDER",
]
