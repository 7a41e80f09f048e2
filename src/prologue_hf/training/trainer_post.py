"""Prologue-Post training (paper section 2.3, appendix D Table A1): only the new parts learn, with ``L_AR`` alone.

The frozen visual tokenizer (any :class:`~prologue_hf.models.visual_tokenizers.VisualTokenizerAdapter`) gives the
visual ids; the prologue encoder + Prob-STE quantizer (:class:`~prologue_hf.ProloguePostModel`) and a compact AR are
trained with the routed AR cross-entropy of stage 1 (:func:`~prologue_hf.training.losses.routed_ar_loss`: prologue
inputs ``p~ @ W_emb``, visual-token dropout 0.5, mean over ``K + 1 + N`` positions). There is no reconstruction,
perceptual, GAN or VQ term: the reconstruction is the frozen tokenizer's, unchanged by construction. The model and its
loss config (:class:`~prologue_hf.training.stage1_model.ProloguePostStage1Model`, :class:`ProloguePostLossConfig`)
live beside stage 1's in :mod:`prologue_hf.training.stage1_model`; this module holds the trainer and the recipe.

Everything else is the stage-1 trainer, reused as is (:class:`PrologueTokenizerTrainer`): AdamW groups (prologue
encoder ``betas=(0, 0.99)``; compact AR ``(0.9, 0.99)``, weight decay 0.03 on matrices), warmup / hold / linear decay,
EMA (half-life 1000 steps) of the prologue model, checkpoints (``tokenizer/`` = EMA Post model, ``tokenizer_online/``,
``compact_ar/``), bit-exact resume (``resume_from_checkpoint``: a folder or ``"last"`` / ``"latest"`` / ``"true"``),
the seeded augmentation collator, logging of AR statistics and codebook usage. The frozen tokenizer is outside the
Post model's module tree, so no optimizer group, DDP bucket or EMA ever holds it; :meth:`ProloguePostTrainer.
create_optimizer` checks that anyway.

Stage 2 then runs unchanged on top: ``examples/pretokenize.py`` with the Post ``tokenizer/`` folder, then
``examples/train_ar.py``; ``ProloguePipeline(tokenizer=post, ar=ar)`` samples and decodes through the frozen tokenizer.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import torch
from transformers import set_seed
from transformers.utils import logging

from ..models.modeling_prologue_post import ProloguePostModel
from ..models.visual_tokenizers import VISUAL_TOKENIZER_ADAPTERS, VisualTokenizerAdapter, detect_adapter_type
from .image_data import ImageDataArguments, load_training_images
from .official_trainer import OfficialPrologueTokenizerTrainer
from .recipe import TOKENIZER_DIR, build_compact_ar, json_overrides, seeded_image_collator, train_save_push
from .stage1_model import ProloguePostLossConfig, ProloguePostStage1Model
from .trainer_tokenizer import PrologueTokenizerTrainer, PrologueTokenizerTrainingArguments

logger = logging.get_logger(__name__)


# ============================================================================================ trainer
class ProloguePostTrainer(PrologueTokenizerTrainer):
    """:class:`PrologueTokenizerTrainer` on a :class:`ProloguePostStage1Model` (see the module docstring).

    Args:
        model: a :class:`ProloguePostStage1Model` (e.g. from :func:`build_post_stage1_model`).
        args: :class:`PrologueTokenizerTrainingArguments` (``reconstruction_grid_steps`` must be 0: the
            reconstructions are the frozen tokenizer's).
        **kwargs: other ``Trainer`` arguments (``train_dataset``, ``data_collator``, ``callbacks``, ...).
    """

    trains_post_models = True

    def __init__(self, model: ProloguePostStage1Model, args: PrologueTokenizerTrainingArguments, **kwargs):
        self._check_post_arguments(model, args)
        super().__init__(model, args, **kwargs)

    def _check_post_arguments(self, model: ProloguePostStage1Model, args: PrologueTokenizerTrainingArguments) -> None:
        """The Post trainers' argument checks (also the class against ``training_mode``), run before anything is
        built or parametrized."""
        mode = getattr(args, "training_mode", "routed")
        official = isinstance(self, OfficialProloguePostTrainer)
        if (mode == "official") != official:
            raise ValueError(
                f"{type(self).__name__} needs training_mode={'official' if official else 'routed'!r}, got {mode!r}; "
                f"training_mode={mode!r} needs "
                f"{'OfficialProloguePostTrainer' if mode == 'official' else 'ProloguePostTrainer'} "
                "(train_post picks the class from training_mode)"
            )
        if not isinstance(model, ProloguePostStage1Model):
            raise ValueError(f"model must be a ProloguePostStage1Model, got {type(model).__name__}")
        if isinstance(args, PrologueTokenizerTrainingArguments) and args.reconstruction_grid_steps:
            raise ValueError(
                "reconstruction_grid_steps must be 0 for Prologue-Post: reconstructions are the frozen tokenizer's own"
            )

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        """The stage-1 optimizer groups; raises ``RuntimeError`` if any frozen-tokenizer parameter got into one."""
        optimizer = super().create_optimizer(model)
        frozen = {id(p) for p in self.model.post.visual_tokenizer.model.parameters()}
        leaked = sum(id(p) in frozen for group in optimizer.param_groups for p in group["params"])
        if leaked:
            raise RuntimeError(f"{leaked} frozen visual-tokenizer parameters are in the optimizer")
        return optimizer

    def resume_tokenizer_identities(self, checkpoint: str) -> tuple[str | None, str | None]:
        """The frozen visual tokenizer the checkpoint's Prologue-Post model was trained over (its config's
        ``visual_tokenizer``: model class and weights SHA-256) and this run's."""
        with open(os.path.join(checkpoint, TOKENIZER_DIR, "config.json")) as handle:
            recorded = json.load(handle).get("visual_tokenizer")
        return _frozen_tokenizer_identity(recorded), _frozen_tokenizer_identity(self.model.post.config.visual_tokenizer)

    def model_card(self) -> dict:
        """The README of a Prologue-Post run (:func:`~prologue_hf.training.recipe.write_model_card` arguments)."""
        post = self.model.post
        c = post.config
        identity = c.visual_tokenizer or {}
        return dict(
            title="Prologue-Post prologue tokenizer",
            summary=(
                f"Prologue tokens (K={c.num_prologue_tokens}, codebook {c.prologue_codebook_size}) learned with `L_AR` on "
                f"top of a frozen `{identity.get('model_class', '?')}` ({c.visual_grid_size}x{c.visual_grid_size} grid, "
                f"{c.visual_codebook_size} codes), arXiv 2605.06137 section 2.3."
            ),
            usage=[
                "from prologue_hf import ProloguePostModel",
                f'post = ProloguePostModel.from_pretrained("<repo>", subfolder="{TOKENIZER_DIR}")  # reloads the frozen tokenizer',
            ],
            facts=[f"`{TOKENIZER_DIR}/`: {'EMA' if self.ema is not None else 'online'} weights; steps: {self.state.global_step}."],
            tags=["prologue-post", "image-tokenizer"],
        )


class OfficialProloguePostTrainer(OfficialPrologueTokenizerTrainer, ProloguePostTrainer):
    """Prologue-Post in the official training mode (``training_mode="official"``): the official Post run of
    ``train_tokenizer.py`` (``post_overlay``: ``phases: DO_PRIOR_ENC,DO_PRIOR_AR:1,1`` over a frozen 2D tokenizer).

    Per batch: an encoder step that trains the prologue encoder + Prob-STE quantizer alone (official
    ``Encoder.semantic_parameters()``; AdamW ``betas=(0, 0.99)``, no weight decay) on
    ``ar_weight * (CE_prologue + CE_eos) + ar_weight * CE_visual`` through the **frozen** compact AR (the prologue
    enters the AR as ``p~ @ W_emb``), then an AR step on the ids computed before that update, with a new
    visual-dropout mask and the unweighted CE (AdamW ``(0.9, 0.99)``, weight decay 0.03 by the official name rule).
    The prologue encoder and the compact AR carry the official gate/norm parameterisation; saved folders are plain
    :class:`~prologue_hf.ProloguePostModel` / :class:`~prologue_hf.PrologueARForCausalLM` folders. The frozen tokenizer
    is never parametrized, optimised or averaged (it is not a submodule; :meth:`create_optimizer` checks).

    Args:
        model: a :class:`ProloguePostStage1Model` whose compact AR has the official layout (``use_qk_norm``,
            ``rope_axes_dim``, no biases).
        args: :class:`PrologueTokenizerTrainingArguments` with ``training_mode="official"``.
        **kwargs: other ``Trainer`` arguments.
    """

    def __init__(self, model: ProloguePostStage1Model, args: PrologueTokenizerTrainingArguments, **kwargs):
        self._check_post_arguments(model, args)  # before the parent parametrizes the model in place
        super().__init__(model, args, **kwargs)


def _frozen_tokenizer_identity(identity: dict | None) -> str | None:
    """``"<model class> weights sha256:..."`` of an adapter identity dict, or None without a weights hash."""
    if not identity or not identity.get("weights_sha256"):
        return None
    return f"{identity.get('model_class', '?')} weights {identity['weights_sha256']}"


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
    overrides = json_overrides(args.post_overrides, "post_overrides")
    if args.init_post_from:
        post = ProloguePostModel.from_pretrained(args.init_post_from, visual_tokenizer=adapter)
    else:
        post = ProloguePostModel.from_visual_tokenizer(adapter, **{"encoder_input": args.encoder_input, **overrides})
    compact_ar = build_compact_ar(post.config, args.num_classes, args.compact_ar_preset, args.compact_ar_overrides)
    return ProloguePostStage1Model(post.train(), compact_ar, loss_config)


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
    to ``output_dir``. The augmentation is seeded as in stage 1 (``data_seed``, else ``seed``); resuming takes a
    folder or ``"last"`` / ``"latest"`` / ``"true"``. Returns the trainer."""
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
    collator = seeded_image_collator(post.config.image_size, data_args, training_args.data_seed or training_args.seed)
    trainer_class = OfficialProloguePostTrainer if training_args.training_mode == "official" else ProloguePostTrainer
    trainer = trainer_class(model, training_args, train_dataset=dataset, data_collator=collator)
    train_save_push(trainer, training_args, commit_message="Prologue-Post prologue tokenizer")
    return trainer


__all__ = [
    "ProloguePostTrainer",
    "OfficialProloguePostTrainer",
    "ProloguePostModelArguments",
    "POST_ARGUMENT_CLASSES",
    "load_frozen_tokenizer",
    "build_post_stage1_model",
    "train_post",
]
