"""Prologue-Post in training_mode='official' (issue 15): the official Post iteration (prologue encoder step with the
AR frozen, then the AR step on the cached ids), its gradient routes, a hand-written reference of one iteration,
gradient accumulation against one big batch, save / reload as plain models, exact resume and the errors."""

import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from prologue_hf import ProloguePipeline
from prologue_hf.models import PrologueARForCausalLM
from prologue_hf.models.modeling_prologue_post import ProloguePostModel
from prologue_hf.models.official_parametrization import (
    init_official_parametrization,
    is_official_parametrized,
    parametrize_official_ar,
    parametrize_official_post,
)
from prologue_hf.testing import random_image_dataset, tiny_ar
from prologue_hf.testing_post import tiny_post_model
from prologue_hf.training.image_data import ImageTrainingCollator, ImageTransform
from prologue_hf.training.official_stage1 import OfficialStage1Settings, OfficialStage1Stepper
from prologue_hf.training.official_trainer import (
    OFFICIAL_STATE_NAME,
    OfficialPrologueTokenizerTrainer,
    official_settings,
)
from prologue_hf.training.trainer_post import (
    OfficialProloguePostTrainer,
    ProloguePostLossConfig,
    ProloguePostStage1Model,
    ProloguePostTrainer,
)
from prologue_hf.training.trainer_tokenizer import PrologueTokenizerTrainingArguments

pytestmark = pytest.mark.usefixtures("one_thread")  # shared CPUs: see conftest.one_thread

OFFICIAL_AR = dict(tie_word_embeddings=False, use_qk_norm=True, rope_axes_dim=[6, 4, 6])
COND_DIM = 8


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _stage1_model(name="janus_vqvae", seed=0, **loss):
    post = tiny_post_model(name, seed=seed, codebook_init="simvq").train()
    ar = tiny_ar(post.config, seed=seed, **OFFICIAL_AR).train()
    return ProloguePostStage1Model(post, ar, ProloguePostLossConfig(**loss))


def _args(output_dir, **overrides):
    values = dict(
        output_dir=str(output_dir), max_steps=4, per_device_train_batch_size=4, learning_rate=3e-3,
        min_learning_rate=3e-4, warmup_steps=0, use_cpu=True, report_to="none", save_strategy="no", logging_steps=1,
        dataloader_num_workers=0, ema_halflife_steps=2.0, seed=0, max_grad_norm=0.0, disable_tqdm=True,
        training_mode="official", official_cond_dim=COND_DIM,
    )
    return PrologueTokenizerTrainingArguments(**{**values, **overrides})


def _trainer(output_dir, name="janus_vqvae", loss=None, n_images=8, **overrides):
    model = _stage1_model(name, **(loss or {}))
    size = model.post.config.image_size
    transform = ImageTransform(size, random_crop=False, hflip=False)
    return OfficialProloguePostTrainer(
        model, _args(output_dir, **overrides), train_dataset=random_image_dataset(n_images, size + 4, size + 2),
        data_collator=ImageTrainingCollator(transform),
    )


def _parametrized_pair(seed=0, settings=None):
    """A tiny Post model + official-layout AR in the official parameterisation, their maps and a stepper."""
    model = _stage1_model(seed=seed)
    post, ar = model.post, model.compact_ar
    num_labels = ar.vocabulary.num_classes + 1
    maps = {"enc": parametrize_official_post(post, COND_DIM, num_labels), "ar": parametrize_official_ar(ar, COND_DIM)}
    init_official_parametrization(list(maps.values()), generator=torch.Generator().manual_seed(seed))
    settings = settings or OfficialStage1Settings(lr_encoder=1e-2, lr_ar=1e-2, label_drop_prob=0.0)
    return post, ar, maps, OfficialStage1Stepper(post, ar, maps, settings)


def _images(size=16, batch=4, seed=0):
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ---------------------------------------------------------------------------------------------- the trainer
def test_official_post_trains_only_the_new_parts_and_the_loss_goes_down(tmp_path):
    # one batch of the same 4 images every step: the prior loss the encoder step minimises must fall
    trainer = _trainer(tmp_path, n_images=4, max_steps=25, logging_steps=1, loss=dict(visual_dropout=0.0))
    post, ar = trainer.model.post, trainer.model.compact_ar
    assert is_official_parametrized(post) and is_official_parametrized(ar)
    assert not is_official_parametrized(post.visual_tokenizer.model)
    frozen = _state(post.visual_tokenizer.model)
    trainer.train()
    assert all(torch.equal(v, frozen[k]) for k, v in _state(post.visual_tokenizer.model).items())
    assert not any(p.requires_grad for p in post.visual_tokenizer.model.parameters())
    frozen_ids = {id(p) for p in post.visual_tokenizer.model.parameters()}
    groups = trainer.optimizer.param_groups
    assert not any(id(p) in frozen_ids for g in groups for p in g["params"])
    assert sorted(g["name"] for g in groups) == ["compact_ar", "compact_ar_no_decay", "encoder"]
    # the encoder optimizer holds exactly the Post model's parameters (official Encoder.semantic_parameters())
    encoder_group = next(g for g in groups if g["name"] == "encoder")
    assert {id(p) for p in encoder_group["params"]} == {id(p) for p in post.parameters()}

    logs = [h for h in trainer.state.log_history if "enc_loss" in h]
    assert len(logs) == 25
    for entry in logs:
        assert "enc_l1_loss" not in entry and "lr_decoder" not in entry  # no decoder, no reconstruction term
        assert entry["enc_loss"] == pytest.approx(entry["enc_vqloss"] + entry["enc_prior_enc_loss"], rel=1e-5)
        assert entry["enc_vqloss"] == pytest.approx(entry["enc_semantic_vqloss"], rel=1e-6)
        assert entry["enc_prior_enc_loss"] == pytest.approx(3 * entry["enc_raw_prior_enc_loss"], rel=1e-5)
        assert np.isfinite(entry["ar_prior_ar_loss"]) and "prologue_p_max_median" in entry
    first = np.mean([e["enc_raw_prior_enc_loss"] for e in logs[:3]])
    last = np.mean([e["enc_raw_prior_enc_loss"] for e in logs[-3:]])
    assert last < 0.8 * first, (first, last)
    ar_first = np.mean([e["ar_prior_ar_loss"] for e in logs[:3]])
    assert np.mean([e["ar_prior_ar_loss"] for e in logs[-3:]]) < 0.8 * ar_first


def test_saved_folders_are_plain_models_that_reload_and_sample(tmp_path):
    trainer = _trainer(tmp_path / "run", max_steps=2, save_strategy="steps", save_steps=2)
    trainer.train()
    checkpoint = tmp_path / "run" / "checkpoint-2"
    assert (checkpoint / OFFICIAL_STATE_NAME).is_file()
    stage1 = trainer.model.eval()
    post = ProloguePostModel.from_pretrained(checkpoint / "tokenizer_online")
    ar = PrologueARForCausalLM.from_pretrained(checkpoint / "compact_ar")
    assert not is_official_parametrized(post) and not is_official_parametrized(ar)
    assert post.visual_tokenizer.identity() == stage1.post.visual_tokenizer.identity()  # incl. the weights SHA-256
    x = _images()
    with torch.no_grad():
        ours, reloaded = stage1.post.encode(x), post.encode(x)
        torch.testing.assert_close(reloaded.prologue_logits, ours.prologue_logits, rtol=0, atol=1e-5)
        assert torch.equal(reloaded.visual_ids, ours.visual_ids)
        ids = ar.vocabulary.build_sequence(torch.tensor([10, 3, 10, 1]), ours.visual_ids, ours.prologue_ids)
        torch.testing.assert_close(ar(ids).logits, stage1.compact_ar(ids).logits, rtol=0, atol=1e-5)
    # the EMA folder is a plain Post model of the EMA weights, and a pipeline samples through the frozen tokenizer
    ema = ProloguePostModel.from_pretrained(checkpoint / "tokenizer")
    with torch.no_grad():
        torch.testing.assert_close(
            ema.encode(x).prologue_logits, trainer.ema.model.encode(x).prologue_logits, rtol=0, atol=1e-5
        )
    pipe = ProloguePipeline(tokenizer=post, ar=ar)
    images = pipe([1, 2], generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert images.shape == (2, 3, 16, 16) and torch.isfinite(images).all()


def test_resume_continues_bit_identically(tmp_path):
    straight = _trainer(tmp_path / "a", max_steps=4, warmup_steps=2)
    straight.train()
    first = _trainer(tmp_path / "b", max_steps=4, warmup_steps=2, save_strategy="steps", save_steps=2)
    first.train()
    resumed = _trainer(tmp_path / "b", max_steps=4, warmup_steps=2, save_strategy="steps", save_steps=2)
    resumed.train(resume_from_checkpoint=str(tmp_path / "b" / "checkpoint-2"))
    for module in ("post", "compact_ar"):
        a, b = _state(getattr(straight.model, module)), _state(getattr(resumed.model, module))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), module
    a, b = straight.ema.state_dict(), resumed.ema.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    for name in ("enc", "ar"):
        s, r = straight.stepper.optimizers[name].state_dict(), resumed.stepper.optimizers[name].state_dict()
        assert all(torch.equal(s["state"][i]["exp_avg"], r["state"][i]["exp_avg"]) for i in s["state"])


# ---------------------------------------------------------------------------------------------- the step
def test_gradient_routes_of_the_two_steps():
    post, ar, maps, stepper = _parametrized_pair()
    x = _images()
    stepper.encoder_step(x, torch.tensor([1, 2, 3, 4]), visual_drop_mask=torch.tensor([True, False, True, False]),
                         update=False)
    # encoder step: the prologue encoder + quantizer (every official tensor of the map), nothing of the AR or the
    # frozen tokenizer
    for name in maps["enc"].names():
        grad = maps["enc"].read(name, grad=True)
        assert grad is not None and torch.isfinite(grad).all(), name
    assert all(p.grad is None for p in ar.parameters())
    assert all(p.grad is None for p in post.visual_tokenizer.model.parameters())
    assert any(maps["enc"].read(n, grad=True).abs().sum() > 0 for n in maps["enc"].names() if "gate" in n)
    with pytest.raises(RuntimeError, match="update_encoder"):
        stepper.ar_step()  # the official order: the encoder is updated before the AR step
    stepper.update_encoder()
    assert all(p.grad is None for p in post.parameters())
    stepper.ar_step(update=False)
    assert all(p.grad is None for p in post.parameters())  # the AR step has no encoder forward
    assert all(p.grad is None for p in post.visual_tokenizer.model.parameters())
    assert maps["ar"].read("semantic_emb.weight", grad=True).abs().sum() > 0
    stepper.update_ar()
    with pytest.raises(RuntimeError, match="encoder_step first"):
        stepper.ar_step()


def _reference_ce(ar, embeds, targets, weights):
    """Official prior loss: per-segment CE summed over its positions, mean over the batch, divided by T."""
    v = ar.vocabulary
    logits = ar(inputs_embeds=embeds).logits[:, :-1, : v.class_offset].float()  # [B, T, V + P + 1]
    token = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")  # [B, T]
    b, t = token.shape
    k = v.num_prologue_tokens
    semantic, eos, visual = token[:, :k].sum(1).mean() / t, token[:, k].mean() / t, token[:, k + 1 :].sum(1).mean() / t
    return weights[0] * (semantic + eos) + weights[1] * visual


def _reference_embeds(ar, class_ids, prologue, visual_ids, drop):
    """``[BOS = class][prologue][EOS][visual or EOS when dropped]`` from the embedding table, written out."""
    v = ar.vocabulary
    table = ar.get_input_embeddings().weight
    eos = table[v.eos_token_id]
    bos = table[v.class_offset + class_ids][:, None]
    if prologue.dtype == torch.long:  # ids
        prologue_emb = table[v.prologue_offset + prologue]
    else:  # Prob-STE one-hots
        prologue_emb = prologue @ table[v.prologue_offset : v.prologue_offset + v.prologue_vocab_size]
    visual = torch.where(drop[:, None, None], eos.expand(visual_ids.shape[0], visual_ids.shape[1], -1), table[visual_ids])
    return torch.cat([bos, prologue_emb, eos.expand(len(class_ids), 1, -1), visual], dim=1)


def test_one_official_iteration_matches_a_hand_written_reference():
    lr, wd = 1e-2, 0.03
    settings = OfficialStage1Settings(lr_encoder=lr, lr_ar=lr, weight_decay_ar=wd, label_drop_prob=0.0)
    post, ar, maps, stepper = _parametrized_pair(settings=settings)
    ref_post, ref_ar, ref_maps, _ = _parametrized_pair(settings=settings)
    assert all(torch.equal(a, b) for a, b in zip(_state(post).values(), _state(ref_post).values()))
    x, labels = _images(), torch.tensor([1, 2, 3, 4])
    enc_drop, ar_drop = torch.tensor([True, False, True, False]), torch.tensor([False, False, True, True])
    enc = stepper.encoder_step(x, labels, visual_drop_mask=enc_drop)
    ar_out = stepper.ar_step(visual_drop_mask=ar_drop)

    # reference encoder step: AR frozen, 3 * (CE_prologue + CE_eos) + 3 * CE_visual through p~ @ W
    ref_ar.requires_grad_(False)
    out = ref_post(x)
    targets = torch.cat(
        [out.prologue_ids + ar.vocabulary.prologue_offset, torch.full_like(labels[:, None], ar.vocabulary.eos_token_id),
         out.visual_ids], dim=1,
    )
    embeds = _reference_embeds(ref_ar, labels, out.prologue_soft_onehot, out.visual_ids, enc_drop)
    prior = _reference_ce(ref_ar, embeds, targets, (3.0, 3.0))
    prior.backward()
    enc_opt = torch.optim.AdamW(list(ref_post.parameters()), lr=lr, betas=(0.0, 0.99), eps=1e-8, weight_decay=0.0)
    enc_opt.step()
    assert float(enc.losses["prior_enc_loss"]) == pytest.approx(float(prior.detach()), rel=1e-6)
    # reference AR step: the ids from before the encoder update, hard lookups, a new mask, unweighted CE
    ref_ar.requires_grad_(True)
    ids = out.prologue_ids.detach()
    loss = _reference_ce(ref_ar, _reference_embeds(ref_ar, labels, ids, out.visual_ids, ar_drop), targets, (1.0, 1.0))
    loss.backward()
    decay, no_decay = {}, {}
    for name in ref_maps["ar"].names():  # official rule: decay on rank >= 2 without bias / norm / adaln in the name
        keep = ref_maps["ar"].read(name).dim() >= 2 and not any(w in name for w in ("bias", "norm", "adaln"))
        for p in ref_maps["ar"].parameters(name):
            (decay if keep else no_decay)[id(p)] = p
    assert set(decay) | set(no_decay) == {id(p) for p in ref_ar.parameters()}
    ar_opt = torch.optim.AdamW(
        [{"params": list(decay.values()), "weight_decay": wd}, {"params": list(no_decay.values()), "weight_decay": 0.0}],
        lr=lr, betas=(0.9, 0.99), eps=1e-8,
    )
    ar_opt.step()
    assert float(ar_out.losses["prior_ar_loss"]) == pytest.approx(float(loss.detach()), rel=1e-6)
    for ours, ref in ((post, ref_post), (ar, ref_ar)):
        a, b = _state(ours), _state(ref)
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)
        assert any(not torch.equal(a[k], v) for k, v in _state(_parametrized_pair()[0 if ours is post else 1]).items())


def test_gradient_accumulation_equals_one_big_batch():
    post, ar, _, big = _parametrized_pair()
    post2, ar2, _, small = _parametrized_pair()
    x, labels = _images(batch=4), torch.tensor([1, 2, 3, 4])
    enc_drop, ar_drop = torch.tensor([True, False, True, False]), torch.tensor([False, True, True, False])
    big.encoder_step(x, labels, visual_drop_mask=enc_drop)
    big.ar_step(visual_drop_mask=ar_drop)
    for half in (slice(0, 2), slice(2, 4)):
        small.encoder_step(x[half], labels[half], visual_drop_mask=enc_drop[half], loss_scale=0.5, update=False)
    small.update_encoder()
    for half in (slice(0, 2), slice(2, 4)):  # each micro-batch's AR step on its own cached ids, in order
        small.ar_step(visual_drop_mask=ar_drop[half], loss_scale=0.5, update=half.start == 2)
    for a, b in ((post, post2), (ar, ar2)):
        sa, sb = _state(a), _state(b)
        for key in sa:
            torch.testing.assert_close(sb[key], sa[key], rtol=0, atol=2e-6, msg=key)


def test_trainer_gradient_accumulation_equals_the_big_batch_run(tmp_path):
    # deterministic draws (no visual dropout, every class dropped) so only the batching differs
    loss = dict(visual_dropout=0.0, ar_label_drop_prob=1.0)
    big = _trainer(tmp_path / "big", loss=loss, max_steps=2, per_device_train_batch_size=4)
    big.train()
    small = _trainer(tmp_path / "small", loss=loss, max_steps=2, per_device_train_batch_size=2,
                     gradient_accumulation_steps=2)
    small.train()
    assert small.state.global_step == 2
    for module in ("post", "compact_ar"):
        a, b = _state(getattr(big.model, module)), _state(getattr(small.model, module))
        for key in a:
            # float rounding of batch 4 vs 2 x 2, magnified by AdamW on near-zero gradients: 1.3e-6 with the plain
            # head + CE, 3.2e-6 with the trainer's fused head + CE (prologue_ar_loss_from_hidden); a wrong id cache or
            # update order moves weights by ~lr (3e-4)
            torch.testing.assert_close(b[key], a[key], rtol=0, atol=5e-6, msg=key)
    big_logs = [h for h in big.state.log_history if "loss" in h]
    small_logs = [h for h in small.state.log_history if "loss" in h]
    assert [h["step"] for h in small_logs] == [1, 2]
    # the Trainer's loss is the mean encoder-step loss of the micro-batches; the AR terms one mean per step
    for a, b in zip(big_logs, small_logs):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
        assert b["ar_prior_ar_loss"] == pytest.approx(a["ar_prior_ar_loss"], rel=1e-4)


def test_no_step_at_learning_rate_zero():
    _, _, _, stepper = _parametrized_pair()
    for optimizer in stepper.optimizers.values():
        for group in optimizer.param_groups:
            group["lr"] = 0.0
    before = [p.detach().clone() for ps in stepper.parameters.values() for p in ps]
    stepper.encoder_step(_images(), None)
    stepper.ar_step()
    after = [p.detach() for ps in stepper.parameters.values() for p in ps]
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    # official `if cur_lr > 0: opt.step()`: AdamW keeps no moments of that step, the gradients are cleared
    assert all(not optimizer.state for optimizer in stepper.optimizers.values())
    assert all(p.grad is None for ps in stepper.parameters.values() for p in ps)


# ---------------------------------------------------------------------------------------------- errors
def test_bad_official_post_settings(tmp_path):
    model = _stage1_model()
    with pytest.raises(ValueError, match="OfficialProloguePostTrainer"):
        ProloguePostTrainer(model, _args(tmp_path))
    with pytest.raises(ValueError, match="training_mode='official'"):
        OfficialProloguePostTrainer(model, _args(tmp_path, training_mode="routed"))
    with pytest.raises(ValueError, match="OfficialProloguePostTrainer"):
        OfficialPrologueTokenizerTrainer(model=model, args=_args(tmp_path))
    with pytest.raises(ValueError, match="reconstruction_grid_steps"):
        OfficialProloguePostTrainer(model, _args(tmp_path, reconstruction_grid_steps=5))
    assert not is_official_parametrized(model.post)  # refused before anything was changed
    with pytest.raises(ValueError, match="prologue_target_gradient"):
        OfficialProloguePostTrainer(_stage1_model(prologue_target_gradient=True), _args(tmp_path))
    post = tiny_post_model("janus_vqvae").train()
    plain_ar = ProloguePostStage1Model(post, tiny_ar(post.config).train())
    with pytest.raises(ValueError, match="use_qk_norm"):
        OfficialProloguePostTrainer(plain_ar, _args(tmp_path))
    assert not is_official_parametrized(plain_ar.post) and not is_official_parametrized(plain_ar.compact_ar)
    with pytest.raises(ValueError, match="codebook_init"):
        tiny_post_model(codebook_init="uniform")
    post2, ar2, maps, _ = _parametrized_pair()
    with pytest.raises(ValueError, match=r"\['ar', 'enc'\]"):
        OfficialStage1Stepper(post2, ar2, {**maps, "dec": maps["enc"]}, OfficialStage1Settings())


def test_official_settings_of_post_follow_the_recipe(tmp_path):
    settings = official_settings(_args(tmp_path, learning_rate=1e-4, min_learning_rate=1e-5), ProloguePostLossConfig())
    assert (settings.lr_encoder, settings.lr_ar, settings.betas_autoencoder, settings.betas_ar) == (
        1e-4, 1e-4, (0.0, 0.99), (0.9, 0.99)
    )
    assert (settings.prior_weight_prologue, settings.prior_weight_visual, settings.visual_dropout) == (3.0, 3.0, 0.5)
    assert settings.label_drop_prob == 1.0 and settings.weight_decay_ar == 0.03 and settings.weight_decay_encoder == 0
    assert settings.commitment_weight == 1.0  # official commitment_loss_weight (scales a detached logged term only)
    assert math.isclose(settings.prologue_vq_beta, 0.25)


def test_official_post_names_and_layouts_against_the_official_fixture():
    """Every ``semantic_enc.*`` / ``semantic_quantizer.*`` tensor of an official Prologue-Post checkpoint
    (tests/fixtures/official-post-tiny, made with the unmodified official code) written through the official map of
    the parameterisation reproduces the official prologue encoder's outputs: the map's names, shapes and layouts
    are the official ones, so the official Post step trains exactly the official parameters."""
    from pathlib import Path

    from safetensors.torch import load_file

    from prologue_hf.conversion.official import convert_official_tokenizer
    from prologue_hf.conversion.official_config import OfficialConfig

    fixture = Path(__file__).parent / "fixtures" / "official-post-tiny"
    config = OfficialConfig.from_yaml(fixture / "config.yaml")
    converted = convert_official_tokenizer(fixture / "tokenizer", config, weights="ema")
    post = ProloguePostModel(converted.config, visual_tokenizer=converted.visual_tokenizer)
    official_map = parametrize_official_post(post, int(config.get("cond_emb_dim")), int(config.get("num_classes")))
    state = load_file(str(fixture / "tokenizer" / "model_2.safetensors"))
    semantic = {k: v for k, v in state.items() if k.startswith(("semantic_enc.", "semantic_quantizer."))}
    semantic = {k: v for k, v in semantic.items() if "pos_select_mask" not in k}  # a buffer, not a parameter
    assert sorted(official_map.names()) == sorted(semantic)
    for name in official_map.names():
        official_map.write(name, semantic[name])
        torch.testing.assert_close(official_map.read(name), semantic[name], rtol=0, atol=0)
    inputs = load_file(str(fixture / "inputs.safetensors"))
    outputs = load_file(str(fixture / "tokenizer_outputs.safetensors"))
    with torch.no_grad():
        ours = post.eval().encode(inputs["images"])
    assert torch.equal(ours.prologue_ids, outputs["semantic_indices"])
    torch.testing.assert_close(ours.prologue_logits, outputs["semantic_cosine_logits"], rtol=0, atol=1e-5)
    torch.testing.assert_close(ours.encoder_hidden_states, outputs["semantic_enc_hidden"], rtol=0, atol=1e-4)


def test_post_B_recipe_is_the_official_post_run():
    import json
    from pathlib import Path

    from prologue_hf.models.configuration_prologue_post import ProloguePostConfig
    from prologue_hf.training.cli import parse_config_and_args
    from prologue_hf.training.trainer_post import POST_ARGUMENT_CLASSES

    config = Path(__file__).resolve().parents[1] / "examples" / "configs" / "post_B.yaml"
    model_args, _, loss, args = parse_config_and_args(
        POST_ARGUMENT_CLASSES, ["--config", str(config), "--visual_tokenizer_name_or_path", "unused",
                                "--output_dir", "unused", "--bf16", "False", "--dataloader_num_workers", "0"],
    )
    assert args.training_mode == "official" and args.official_cond_dim == 32 and args.max_grad_norm == 0
    assert (args.learning_rate, args.tokenizer_adam_beta1, args.tokenizer_adam_beta2) == (1e-4, 0.0, 0.99)
    assert (args.ar_adam_beta1, args.ar_adam_beta2, args.ar_weight_decay) == (0.9, 0.99, 0.03)
    assert (loss.ar_weight, loss.visual_dropout, loss.ar_label_drop_prob) == (3.0, 0.5, 1.0)
    post = ProloguePostConfig(**json.loads(model_args.post_overrides))
    # official SemanticEncoder: 10 x 512, 8 heads, mlp_ratio 11/4; SemanticQuantizer: 1024 x 14, simvq, tau 0.1
    assert (post.num_hidden_layers, post.hidden_size, post.num_attention_heads, post.intermediate_size) == (10, 512, 8, 1408)
    assert (post.prologue_codebook_size, post.codebook_dim, post.codebook_init, post.prologue_temperature) == (
        1024, 14, "simvq", 0.1
    )
    ar = json.loads(model_args.compact_ar_overrides)
    assert ar["use_qk_norm"] and not ar["tie_word_embeddings"] and ar["num_hidden_layers"] == 7


def test_train_post_picks_the_official_trainer(tmp_path, image_dir):
    import json

    from prologue_hf.testing_post import TINY_POST_KWARGS, tiny_visual_tokenizer
    from prologue_hf.training.image_data import ImageDataArguments
    from prologue_hf.training.trainer_post import ProloguePostModelArguments, train_post

    model_args = ProloguePostModelArguments(
        visual_tokenizer_name_or_path="unused (the adapter is passed in)", num_classes=2,
        post_overrides=json.dumps({**TINY_POST_KWARGS, "codebook_init": "simvq"}),
        compact_ar_overrides=json.dumps({"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, **OFFICIAL_AR}),
    )
    data_args = ImageDataArguments(train_data=str(image_dir), cache_dir=str(tmp_path / "hf-cache"))
    args = _args(tmp_path / "out", max_steps=2, save_strategy="steps", save_steps=2)
    trainer = train_post(model_args, data_args, ProloguePostLossConfig(), args, tiny_visual_tokenizer("janus_vqvae"))
    assert type(trainer) is OfficialProloguePostTrainer and trainer.state.global_step == 2
    post = ProloguePostModel.from_pretrained(tmp_path / "out" / "tokenizer")  # the final save, a plain model
    assert not is_official_parametrized(post) and post.config.codebook_init == "simvq"
    assert [h["step"] for h in trainer.state.log_history if "enc_loss" in h] == [1, 2]


def test_official_post_killed_three_ways_resumes_bit_identical(tmp_path, monkeypatch):
    """The atomic-checkpoint chain of tests/test_checkpoint_safety.py on the official Post recipe: killed mid-run,
    while writing a checkpoint and after trainer_state.json, each resume from the newest complete checkpoint ends
    bit-identical to the uninterrupted run (weights, official_parametrization.safetensors, the stepper's AdamW
    states in optimizer.pt, scheduler and logged losses)."""
    import json
    import signal

    import test_checkpoint_safety
    from test_checkpoint_safety import COMMON, CONFIGS, _image_folder, _kill_resume_chain

    from prologue_hf.testing_post import tiny_vqmodel

    install = test_checkpoint_safety._install_kill

    def install_kill(point, step):  # the official trainer's training_step does not go through Trainer.training_step
        if point != "mid_run":
            return install(point, step)
        original = OfficialPrologueTokenizerTrainer.training_step

        def training_step(self, *args, **kwargs):
            if self.state.global_step == step:
                os.kill(os.getpid(), signal.SIGKILL)
            return original(self, *args, **kwargs)

        OfficialPrologueTokenizerTrainer.training_step = training_step

    monkeypatch.setattr(test_checkpoint_safety, "_install_kill", install_kill)  # read by the forked child

    tiny_vqmodel().save_pretrained(tmp_path / "vq")
    images = _image_folder(tmp_path / "images", 16)
    ar = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, **OFFICIAL_AR}
    argv = ["--config", str(CONFIGS / "post_tiny_cpu.yaml"), "--visual_tokenizer_name_or_path", str(tmp_path / "vq"),
            "--train_data", str(images), "--cache_dir", str(tmp_path / "hf-cache"), "--training_mode", "official",
            "--official_cond_dim", "8", "--max_grad_norm", "0", "--compact_ar_overrides", json.dumps(ar), *COMMON]
    _kill_resume_chain("train_prologue_post", argv, tmp_path, ("tokenizer", "tokenizer_online", "compact_ar"))
    assert (tmp_path / "killed" / "checkpoint-8" / OFFICIAL_STATE_NAME).is_file()
