"""Prologue-Post training (paper section 2.3, appendix D Table A1): only the new parts learn, with ``L_AR`` alone.

The frozen visual tokenizer (any :class:`~prologue_hf.models.visual_tokenizers.VisualTokenizerAdapter`) gives the
visual ids; the prologue encoder + Prob-STE quantizer (:class:`~prologue_hf.ProloguePostModel`) and a compact AR are
trained with the routed AR cross-entropy of stage 1 (:func:`~prologue_hf.training.losses.routed_ar_loss`: prologue
inputs ``p~ @ W_emb``, visual-token dropout 0.5, mean over ``K + 1 + N`` positions). There is no reconstruction,
perceptual, GAN or VQ term: the reconstruction is the frozen tokenizer's, unchanged by construction.

Everything else is the stage-1 trainer, reused as is (:class:`PrologueTokenizerTrainer`): AdamW groups (prologue
encoder ``betas=(0, 0.99)``; compact AR ``(0.9, 0.99)``, weight decay 0.03 on matrices), warmup / hold / linear decay,
EMA (half-life 1000 steps) of the prologue model, checkpoints (``tokenizer/`` = EMA Post model, ``tokenizer_online/``,
``compact_ar/``), bit-exact resume, logging of AR statistics and codebook usage. The frozen tokenizer is outside the
Post model's module tree, so no optimizer group, DDP bucket or EMA ever holds it; :meth:`ProloguePostTrainer.
create_optimizer` checks that anyway.

Stage 2 then runs unchanged on top: ``examples/pretokenize.py`` with the Post ``tokenizer/`` folder, then
``examples/train_ar.py``; ``ProloguePipeline(tokenizer=post, ar=ar)`` samples and decodes through the frozen tokenizer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from transformers import set_seed
from transformers.utils import logging

from ..models.configuration_prologue_ar import PrologueARConfig
from ..models.modeling_prologue_ar import PrologueARForCausalLM
from ..models.modeling_prologue_post import ProloguePostModel
from ..models.visual_tokenizers import VISUAL_TOKENIZER_ADAPTERS, VisualTokenizerAdapter, detect_adapter_type
from .data import ImageDataArguments, ImageTrainingCollator, ImageTransform, load_training_images
from .losses import (
    PrologueStage1LossConfig,
    PrologueStage1Model,
    PrologueStage1Output,
    prepare_class_labels,
    routed_ar_loss,
)
from .trainer_tokenizer import PrologueTokenizerTrainer, PrologueTokenizerTrainingArguments, _json_overrides

logger = logging.get_logger(__name__)


# ============================================================================================ loss and model
@dataclass
class ProloguePostLossConfig:
    """The only loss of Prologue-Post: ``ar_weight * L_AR`` (paper section 2.3)."""

    ar_weight: float = field(
        default=3.0,
        metadata={"help": "lambda on L_AR (paper: 3). With Adam it only matters through gradient clipping."},
    )
    visual_dropout: float = field(default=0.5, metadata={"help": "Per-sample probability that all visual AR inputs become EOS (paper: 0.5)."})
    ar_label_drop_prob: float = field(
        default=1.0,
        metadata={"help": "Probability that the compact AR sees the null class instead of the label (official stage 1: 1.0)."},
    )
    prologue_target_gradient: bool = field(
        default=False, metadata={"help": "Also back-propagate log p(z_p) through the prologue targets (official: off)."}
    )

    def __post_init__(self):
        if self.ar_weight <= 0:
            raise ValueError(f"ar_weight must be > 0 (L_AR is the only training signal), got {self.ar_weight}")

    def to_stage1(self) -> PrologueStage1LossConfig:
        """The stage-1 loss config with every reconstruction-side term switched off (validates the AR fields)."""
        return PrologueStage1LossConfig(
            l1_weight=0.0,
            perceptual_weight=0.0,
            perceptual_loss="none",
            gan_weight=0.0,
            commitment_weight=0.0,
            ar_weight=self.ar_weight,
            ar_target="prologue",
            visual_dropout=self.visual_dropout,
            ar_label_drop_prob=self.ar_label_drop_prob,
            prologue_target_gradient=self.prologue_target_gradient,
        )


class ProloguePostStage1Model(PrologueStage1Model):
    """The stage-1 module of Prologue-Post: ``tokenizer`` is a :class:`ProloguePostModel`, ``compact_ar`` the AR,
    no discriminator and no perceptual network; ``forward`` returns ``ar_weight * L_AR`` only.

    >>> from prologue_hf.testing_post import tiny_post_model
    >>> from prologue_hf.testing import tiny_ar
    >>> post = tiny_post_model("janus_vqvae").train()
    >>> model = ProloguePostStage1Model(post, tiny_ar(post.config).train())
    >>> out = model(torch.rand(2, 3, 16, 16) * 2 - 1)
    >>> sorted(out.metrics)[:3]
    ['ar_acc_eos', 'ar_acc_prologue', 'ar_acc_visual']
    """

    def __init__(
        self,
        post: ProloguePostModel,
        compact_ar: PrologueARForCausalLM,
        loss_config: ProloguePostLossConfig | None = None,
    ):
        if not isinstance(post, ProloguePostModel):
            raise ValueError(f"post must be a ProloguePostModel, got {type(post).__name__}")
        if not isinstance(compact_ar, PrologueARForCausalLM):
            raise ValueError(f"compact_ar must be a PrologueARForCausalLM, got {type(compact_ar).__name__}")
        post.check_ar_config(compact_ar.config)  # names the frozen tokenizer's grid / codebook on a mismatch
        config = loss_config or ProloguePostLossConfig()
        super().__init__(post, compact_ar, None, config.to_stage1())
        self.post_loss_config = config
        # the visual pathway: eval mode, no gradients (the adapter already froze it; asserted again here)
        post.visual_tokenizer.model.eval().requires_grad_(False)

    @property
    def post(self) -> ProloguePostModel:
        return self.tokenizer

    def forward(
        self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None, global_step: int = 0
    ) -> PrologueStage1Output:
        """``pixel_values`` ``[B, C, S, S]`` in ``[-1, 1]``, ``labels`` ``[B]`` (``-1`` = unlabelled) ->
        :class:`PrologueStage1Output` with ``loss = ar_weight * L_AR`` and the AR metrics."""
        cfg = self.post_loss_config
        encoded = self.tokenizer(pixel_values)  # frozen visual ids + Prob-STE prologue (p~ carries the gradient)
        class_labels = prepare_class_labels(
            labels, pixel_values.shape[0], self.compact_ar.vocabulary.num_classes, cfg.ar_label_drop_prob,
            encoded.visual_ids.device,
        )
        ar = routed_ar_loss(
            self.compact_ar,
            encoded,
            class_labels,
            target="prologue",
            visual_dropout=cfg.visual_dropout,
            prologue_target_gradient=cfg.prologue_target_gradient,
        )
        loss = cfg.ar_weight * ar.loss
        metrics = {"ar_ce": ar.loss.detach(), **ar.metrics, "generator_loss": loss.detach()}
        return PrologueStage1Output(
            loss=loss,
            generator_loss=loss,
            discriminator_loss=loss.new_zeros(()),
            reconstruction=None,
            visual_ids=encoded.visual_ids,
            prologue_ids=encoded.prologue_ids,
            metrics=metrics,
        )


# ============================================================================================ trainer
class ProloguePostTrainer(PrologueTokenizerTrainer):
    """:class:`PrologueTokenizerTrainer` on a :class:`ProloguePostStage1Model` (see the module docstring).

    Args:
        model: a :class:`ProloguePostStage1Model` (e.g. from :func:`build_post_stage1_model`).
        args: :class:`PrologueTokenizerTrainingArguments` (``reconstruction_grid_steps`` must be 0: the
            reconstructions are the frozen tokenizer's).
        **kwargs: other ``Trainer`` arguments (``train_dataset``, ``data_collator``, ``callbacks``, ...).
    """

    def __init__(self, model: ProloguePostStage1Model, args: PrologueTokenizerTrainingArguments, **kwargs):
        if not isinstance(model, ProloguePostStage1Model):
            raise ValueError(f"model must be a ProloguePostStage1Model, got {type(model).__name__}")
        if isinstance(args, PrologueTokenizerTrainingArguments) and args.reconstruction_grid_steps:
            raise ValueError(
                "reconstruction_grid_steps must be 0 for Prologue-Post: reconstructions are the frozen tokenizer's own"
            )
        super().__init__(model, args, **kwargs)

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        """The stage-1 optimizer groups; raises ``RuntimeError`` if any frozen-tokenizer parameter got into one."""
        optimizer = super().create_optimizer(model)
        frozen = {id(p) for p in self.model.post.visual_tokenizer.model.parameters()}
        leaked = sum(id(p) in frozen for group in optimizer.param_groups for p in group["params"])
        if leaked:
            raise RuntimeError(f"{leaked} frozen visual-tokenizer parameters are in the optimizer")
        return optimizer

    def create_model_card(self, *args, **kwargs) -> None:
        """A short README for the output folder."""
        if not self.is_world_process_zero():
            return
        post = self.model.post
        identity = post.config.visual_tokenizer or {}
        lines = [
            "---",
            "library_name: prologue-hf",
            "tags: [prologue, prologue-post, image-tokenizer]",
            "---",
            "# Prologue-Post prologue tokenizer",
            "",
            f"Prologue tokens (K={post.config.num_prologue_tokens}, codebook {post.config.prologue_codebook_size}) learned "
            f"with `L_AR` on top of a frozen `{identity.get('model_class', '?')}` "
            f"({post.config.visual_grid_size}x{post.config.visual_grid_size} grid, {post.config.visual_codebook_size} codes), "
            "arXiv 2605.06137 section 2.3.",
            "",
            "```python",
            "from prologue_hf import ProloguePostModel",
            'post = ProloguePostModel.from_pretrained("<repo>", subfolder="tokenizer")  # reloads the frozen tokenizer',
            "```",
            "",
            f"- `tokenizer/`: {'EMA' if self.ema is not None else 'online'} weights; steps: {self.state.global_step}.",
        ]
        with open(os.path.join(self.args.output_dir, "README.md"), "w") as handle:
            handle.write("\n".join(lines) + "\n")


# ============================================================================================ recipe
@dataclass
class ProloguePostModelArguments:
    """Frozen tokenizer, Prologue-Post model and compact AR of ``examples/train_prologue_post.py``."""

    visual_tokenizer_name_or_path: str = field(
        metadata={"help": "Frozen tokenizer: a local save_pretrained folder or a Hub repo of the VQ model itself."}
    )
    visual_tokenizer_type: str = field(
        default="auto", metadata={"help": f"Adapter: 'auto' (from config.json) or one of {sorted(VISUAL_TOKENIZER_ADAPTERS)}."}
    )
    visual_tokenizer_subfolder: str | None = field(default=None, metadata={"help": "Subfolder of the tokenizer repo."})
    visual_tokenizer_image_size: int | None = field(default=None, metadata={"help": "Input size (required for Emu3)."})
    visual_tokenizer_input_range: str | None = field(
        default=None, metadata={"help": "'low,high' pixel range the tokenizer expects (default: the adapter's)."}
    )
    encoder_input: str = field(default="features", metadata={"help": "'features' (frozen encoder output, official) or 'pixels'."})
    post_overrides: str | None = field(
        default=None, metadata={"help": "JSON dict of ProloguePostConfig fields (num_prologue_tokens, hidden_size, ...)."}
    )
    init_post_from: str | None = field(default=None, metadata={"help": "Start from a saved ProloguePostModel instead."})
    compact_ar_preset: str | None = field(default="compact", metadata={"help": "AR preset of the compact AR ('compact' = 10 x 512)."})
    compact_ar_overrides: str | None = field(default=None, metadata={"help": "JSON dict of PrologueARConfig fields."})
    num_classes: int = field(default=1000, metadata={"help": "Real classes of the dataset (the null class is added)."})

    def __post_init__(self):
        if self.visual_tokenizer_type != "auto" and self.visual_tokenizer_type not in VISUAL_TOKENIZER_ADAPTERS:
            raise ValueError(
                f"visual_tokenizer_type must be 'auto' or one of {sorted(VISUAL_TOKENIZER_ADAPTERS)}, got {self.visual_tokenizer_type!r}"
            )
        self.input_range()  # validate early

    def input_range(self) -> tuple[float, float] | None:
        """``visual_tokenizer_input_range`` parsed as ``(low, high)`` (None: the adapter's default)."""
        if self.visual_tokenizer_input_range is None:
            return None
        try:
            low, high = (float(v) for v in self.visual_tokenizer_input_range.split(","))
        except ValueError:
            raise ValueError(
                f"visual_tokenizer_input_range must be 'low,high', got {self.visual_tokenizer_input_range!r}"
            ) from None
        return low, high


def load_frozen_tokenizer(args: ProloguePostModelArguments) -> VisualTokenizerAdapter:
    """The frozen tokenizer named by ``args``, wrapped in its adapter."""
    adapter_type = args.visual_tokenizer_type
    if adapter_type == "auto":
        adapter_type = detect_adapter_type(args.visual_tokenizer_name_or_path, args.visual_tokenizer_subfolder)
    return VISUAL_TOKENIZER_ADAPTERS[adapter_type].from_pretrained(
        args.visual_tokenizer_name_or_path,
        subfolder=args.visual_tokenizer_subfolder,
        image_size=args.visual_tokenizer_image_size,
        input_range=args.input_range(),
    )


def build_post_stage1_model(
    args: ProloguePostModelArguments,
    loss_config: ProloguePostLossConfig,
    visual_tokenizer: VisualTokenizerAdapter | None = None,
) -> ProloguePostStage1Model:
    """Frozen tokenizer (``visual_tokenizer`` or loaded from ``args``), a fresh (or ``init_post_from``) Prologue-Post
    model and a compact AR whose vocabulary matches it. Call after ``transformers.set_seed``."""
    adapter = visual_tokenizer if visual_tokenizer is not None else load_frozen_tokenizer(args)
    overrides = _json_overrides(args.post_overrides, "post_overrides")
    if args.init_post_from:
        post = ProloguePostModel.from_pretrained(args.init_post_from, visual_tokenizer=adapter)
    else:
        post = ProloguePostModel.from_visual_tokenizer(adapter, **{"encoder_input": args.encoder_input, **overrides})
    c = post.config
    vocab_fields = dict(
        visual_vocab_size=c.visual_codebook_size,
        prologue_vocab_size=c.prologue_codebook_size,
        num_prologue_tokens=c.num_prologue_tokens,
        num_visual_tokens=c.num_visual_tokens,
        num_classes=args.num_classes,
    )
    ar_overrides = _json_overrides(args.compact_ar_overrides, "compact_ar_overrides")
    if args.compact_ar_preset:
        ar_config = PrologueARConfig.from_preset(args.compact_ar_preset, **{**ar_overrides, **vocab_fields})
    else:
        ar_config = PrologueARConfig(**{**ar_overrides, **vocab_fields})
    return ProloguePostStage1Model(post.train(), PrologueARForCausalLM(ar_config).train(), loss_config)


POST_ARGUMENT_CLASSES = (
    ProloguePostModelArguments,
    ImageDataArguments,
    ProloguePostLossConfig,
    PrologueTokenizerTrainingArguments,
)


def train_post(
    model_args: ProloguePostModelArguments,
    data_args: ImageDataArguments,
    loss_config: ProloguePostLossConfig,
    training_args: PrologueTokenizerTrainingArguments,
    visual_tokenizer: VisualTokenizerAdapter | None = None,
) -> ProloguePostTrainer:
    """Run Prologue-Post training end to end (accelerate's order: data under ``main_process_first``, ``set_seed``,
    models, train / resume, save): writes ``tokenizer/`` (EMA Post model), ``tokenizer_online/`` and ``compact_ar/``
    to ``output_dir``. Returns the trainer."""
    with training_args.main_process_first(desc="loading the dataset"):
        dataset = load_training_images(data_args, seed=training_args.seed)
    set_seed(training_args.seed)  # the same initial weights on every process and every resumed run
    model = build_post_stage1_model(model_args, loss_config, visual_tokenizer)
    post = model.post
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in post.visual_tokenizer.model.parameters())
    logger.info(
        f"Prologue-Post over {post.visual_tokenizer}: {trainable / 1e6:.2f}M trainable (prologue encoder + quantizer + "
        f"compact AR), {frozen / 1e6:.2f}M frozen"
    )
    transform = ImageTransform(post.config.image_size, data_args.random_crop, data_args.hflip)
    trainer = ProloguePostTrainer(
        model, training_args, train_dataset=dataset, data_collator=ImageTrainingCollator(transform)
    )
    resume = training_args.resume_from_checkpoint
    trainer.train(resume_from_checkpoint=True if resume in ("last", "latest") else resume)
    trainer.save_model()
    if training_args.push_to_hub:
        trainer.push_to_hub()
    return trainer


__all__ = [
    "ProloguePostLossConfig",
    "ProloguePostStage1Model",
    "ProloguePostTrainer",
    "ProloguePostModelArguments",
    "POST_ARGUMENT_CLASSES",
    "load_frozen_tokenizer",
    "build_post_stage1_model",
    "train_post",
]
