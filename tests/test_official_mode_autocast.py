"""--bf16 reaches the official stage-1 mode: its stepper calls the modules outside the prepared model's forward,
where accelerate puts the autocast, so the trainer applies the same autocast itself (issue 19: the B recipe's
official mode otherwise trained in float32 under --bf16)."""

import json

import pytest
import torch
from transformers import set_seed

from prologue_hf.testing import TINY_AR_KWARGS, TINY_TOKENIZER_KWARGS
from prologue_hf.training.image_data import (
    ImageDataArguments,
    ImageTrainingCollator,
    ImageTransform,
    load_training_images,
)
from prologue_hf.training.losses import PrologueStage1LossConfig
from prologue_hf.training.official_trainer import OfficialPrologueTokenizerTrainer
from prologue_hf.training.trainer_tokenizer import (
    PrologueStage1ModelArguments,
    PrologueTokenizerTrainingArguments,
    build_stage1_model,
)

pytestmark = pytest.mark.usefixtures("one_thread")

OFFICIAL_AR = {**TINY_AR_KWARGS, "tie_word_embeddings": False, "use_qk_norm": True, "rope_axes_dim": [6, 4, 6]}


@pytest.mark.parametrize("bf16", [False, True])
def test_official_mode_steps_run_in_the_requested_precision(tmp_path, image_dir, bf16):
    model_args = PrologueStage1ModelArguments(
        tokenizer_overrides=json.dumps(TINY_TOKENIZER_KWARGS), compact_ar_overrides=json.dumps(OFFICIAL_AR), num_classes=2
    )
    loss = PrologueStage1LossConfig(perceptual_loss="none", gan_weight=0.0, lecam_weight=0.0, r1_weight=0.0)
    set_seed(0)
    model = build_stage1_model(model_args, loss)
    args = PrologueTokenizerTrainingArguments(
        output_dir=str(tmp_path / "run"), max_steps=2, per_device_train_batch_size=2, learning_rate=1e-3,
        warmup_steps=1, logging_steps=1000, save_strategy="no", report_to="none", seed=0, use_cpu=True, disable_tqdm=True,
        dataloader_num_workers=0, max_grad_norm=0.0, training_mode="official", official_cond_dim=16, bf16=bf16,
    )  # fmt: skip
    dataset = load_training_images(ImageDataArguments(train_data=str(image_dir), cache_dir=str(tmp_path / "cache")))
    trainer = OfficialPrologueTokenizerTrainer(
        model=model, args=args, train_dataset=dataset, data_collator=ImageTrainingCollator(ImageTransform(32), seed=0)
    )
    seen = {"encoder": set(), "compact_ar": set()}
    linears = {
        "encoder": next(m for m in model.tokenizer.encoder.modules() if isinstance(m, torch.nn.Linear)),
        "compact_ar": next(m for m in model.compact_ar.model.modules() if isinstance(m, torch.nn.Linear)),
    }
    for name, linear in linears.items():
        linear.register_forward_hook(lambda m, i, out, dtypes=seen[name]: dtypes.add(out.dtype))
    result = trainer.train()  # no logging step: the logged diagnostics encode outside training, in float32
    expected = {torch.bfloat16 if bf16 else torch.float32}
    assert seen == {"encoder": expected, "compact_ar": expected}  # the compact AR runs in both steps
    assert all(p.dtype == torch.float32 for p in model.parameters())  # float32 master weights
    assert trainer.state.global_step == 2 and torch.isfinite(torch.tensor(result.training_loss))
