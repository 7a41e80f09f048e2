"""Tests of the routed stage-1 loss: gradient routing, visual dropout, target-gradient flag, GAN and perceptual terms."""

import math
import os

import pytest
import torch

from prologue_hf.models.discriminator import PrologueDiscriminator, PrologueDiscriminatorConfig
from prologue_hf.models.quantizers import straight_through_onehot
from prologue_hf.testing import tiny_ar, tiny_tokenizer
from prologue_hf.training.losses import (
    LPIPSVGGLoss,
    PerceptualWeightsUnavailableError,
    PrologueStage1LossConfig,
    adaptive_gan_weight,
    build_perceptual_loss,
    discriminator_loss,
    generator_adversarial_loss,
    lecam_regularizer,
    prepare_class_labels,
    prologue_ar_loss,
    routed_ar_loss,
)
from prologue_hf.training.stage1_model import PrologueStage1Model

pytestmark = pytest.mark.usefixtures("one_thread")  # shared CPUs: see conftest.one_thread


def _images(batch=4, seed=0):
    return torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _grad_abs_sum(module):
    """{name: sum |grad|} with None for parameters the backward never reached."""
    return {n: (None if p.grad is None else float(p.grad.abs().sum())) for n, p in module.named_parameters()}


def _is_zero(value):
    return value is None or value == 0.0


# ------------------------------------------------------------------------------------------------ routing
def test_prologue_routing_reaches_prologue_path_only():
    tokenizer = tiny_tokenizer().train()
    ar = tiny_ar(tokenizer.config).train()
    encoded = tokenizer.encode(_images())
    labels = torch.tensor([0, 3, 10, 7])  # 10 = null class
    out = routed_ar_loss(ar, encoded, labels, target="prologue", visual_dropout=0.5)
    out.loss.backward()
    grads = _grad_abs_sum(tokenizer)
    visual_codebook = {n: g for n, g in grads.items() if n.startswith("visual_quantizer.")}
    decoder = {n: g for n, g in grads.items() if n.startswith("decoder.")}
    assert visual_codebook and all(_is_zero(g) for g in visual_codebook.values()), visual_codebook
    assert decoder and all(_is_zero(g) for g in decoder.values())
    for name in ("prologue_quantizer.embedding.weight", "prologue_quantizer.proj_in.weight", "encoder.queries"):
        assert grads[name] is not None and grads[name] > 0, name
    # the shared encoder trunk gets the indirect (attention) signal the paper mentions (section 2, "rFID +0.09")
    assert grads["encoder.input_layer.weight"] > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in ar.named_parameters() if "layers.0" in n)


def test_ar_regularisation_baseline_reaches_visual_codebook():
    tokenizer = tiny_tokenizer(num_prologue_tokens=0).train()
    assert tokenizer.config.tokenizer_type == "2d"
    ar = tiny_ar(tokenizer.config).train()
    encoded = tokenizer.encode(_images())
    out = routed_ar_loss(ar, encoded, torch.full((4,), 10), target="visual")
    out.loss.backward()
    grads = _grad_abs_sum(tokenizer)
    assert grads["visual_quantizer.embedding.weight"] > 0 and grads["visual_quantizer.proj_in.weight"] > 0
    assert grads["encoder.input_layer.weight"] > 0
    assert all(_is_zero(g) for n, g in grads.items() if n.startswith("decoder."))
    # the sequence is [class][visual x N] and the AR read soft visual embeddings equal (forward) to the discrete ones
    vocab = ar.vocabulary
    assert out.targets.shape == (4, 1 + vocab.num_visual_tokens)
    discrete = ar.embed_sequence(torch.full((4,), 10), visual_ids=encoded.visual_ids)
    torch.testing.assert_close(out.inputs_embeds, discrete, atol=1e-6, rtol=0)


def test_one_d_tokenizer_with_ar_regularisation():
    tokenizer = tiny_tokenizer(tokenizer_type="1d", num_prologue_tokens=0, num_latent_tokens=6).train()
    ar = tiny_ar(tokenizer.config).train()
    model = PrologueStage1Model(tokenizer, ar, None, PrologueStage1LossConfig(gan_weight=0, perceptual_loss="none", ar_target="visual"))
    out = model(_images())
    assert out.visual_ids.shape == (4, 6) and "ar_ce" in out.metrics
    out.loss.backward()
    assert tokenizer.visual_quantizer.embedding.weight.grad.abs().sum() > 0


def test_k0_and_1d_baselines_have_no_ar_term():
    for overrides in ({"num_prologue_tokens": 0}, {"tokenizer_type": "1d", "num_prologue_tokens": 0, "num_latent_tokens": 6}):
        tokenizer = tiny_tokenizer(**overrides).train()
        config = PrologueStage1LossConfig(gan_weight=0, perceptual_loss="none")
        model = PrologueStage1Model(tokenizer, None, None, config)
        assert model.ar_target == "none" and model.compact_ar is None
        images = _images()
        out = model(images)
        assert not any(k.startswith("ar_") for k in out.metrics)
        # the total is exactly the reconstruction + VQ terms, whatever lambda says
        expected = (out.reconstruction - images).abs().mean() + tokenizer(images).quantizer_loss
        torch.testing.assert_close(out.loss, expected, rtol=1e-6, atol=1e-7)
        with pytest.raises(ValueError, match="compact_ar was given"):
            PrologueStage1Model(tokenizer, tiny_ar(tokenizer.config), None, config)


def test_stage1_model_validates_its_parts():
    tokenizer = tiny_tokenizer()
    ar = tiny_ar(tokenizer.config)
    no_gan = PrologueStage1LossConfig(gan_weight=0, perceptual_loss="none")
    with pytest.raises(ValueError, match="needs ar_target='prologue'"):
        PrologueStage1Model(tokenizer, None, None, PrologueStage1LossConfig(gan_weight=0, perceptual_loss="none", ar_target="none"))
    with pytest.raises(ValueError, match="needs a compact_ar"):
        PrologueStage1Model(tokenizer, None, None, no_gan)
    with pytest.raises(ValueError, match="discriminator must be given"):
        PrologueStage1Model(tokenizer, ar, None, PrologueStage1LossConfig(perceptual_loss="none"))
    with pytest.raises(ValueError, match="vocabularies do not match"):
        PrologueStage1Model(tokenizer, tiny_ar(tiny_tokenizer(visual_codebook_size=32).config), None, no_gan)
    for bad in (dict(visual_dropout=1.5), dict(ar_target="both"), dict(gan_loss="wgan"), dict(ar_weight=-1.0),
                dict(perceptual_loss="vgg"), dict(r1_interval=0)):
        with pytest.raises(ValueError):
            PrologueStage1LossConfig(**bad)


# ------------------------------------------------------------------------------------------------ dropout
def test_visual_dropout_replaces_exactly_the_visual_inputs():
    tokenizer = tiny_tokenizer()
    ar = tiny_ar(tokenizer.config)
    vocab = ar.vocabulary
    encoded = tokenizer.encode(_images())
    labels = torch.tensor([1, 2, 3, 4])
    mask = torch.tensor([True, False, True, False])
    kept = routed_ar_loss(ar, encoded, labels, visual_dropout=0.0)
    dropped = routed_ar_loss(ar, encoded, labels, drop_visual=mask)
    assert kept.drop_visual is None
    start = 1 + vocab.visual_start  # class token + K prologue + EOS
    eos = ar.get_input_embeddings().weight[vocab.eos_token_id]
    # visual inputs of the marked samples are the EOS embedding, everything else is untouched
    assert torch.equal(dropped.inputs_embeds[mask, start:], eos.expand(2, vocab.num_visual_tokens, -1))
    assert torch.equal(dropped.inputs_embeds[~mask], kept.inputs_embeds[~mask])
    assert torch.equal(dropped.inputs_embeds[:, :start], kept.inputs_embeds[:, :start])
    assert not torch.equal(kept.inputs_embeds[mask, start:], dropped.inputs_embeds[mask, start:])
    # targets never change
    assert torch.equal(dropped.targets, kept.targets)
    assert torch.equal(kept.targets, vocab.build_sequence(labels, encoded.visual_ids, encoded.prologue_ids))


def test_visual_dropout_rate():
    tokenizer = tiny_tokenizer()
    ar = tiny_ar(tokenizer.config)
    encoded = tokenizer.encode(_images(64))
    labels = torch.full((64,), 10)
    torch.manual_seed(0)
    fractions = [float(routed_ar_loss(ar, encoded, labels, visual_dropout=0.5).drop_visual.float().mean()) for _ in range(16)]
    mean = sum(fractions) / len(fractions)  # 1024 Bernoulli(0.5) draws: std 0.0156
    assert abs(mean - 0.5) < 0.06, mean
    assert routed_ar_loss(ar, encoded, labels, visual_dropout=1.0).drop_visual.all()
    torch.manual_seed(1)
    draws = torch.stack([routed_ar_loss(ar, encoded, labels, visual_dropout=0.25).drop_visual for _ in range(8)])
    assert abs(float(draws.float().mean()) - 0.25) < 0.06


# ------------------------------------------------------------------------------------------------ the one AR cross-entropy
def test_routed_loss_is_the_one_ar_cross_entropy():
    tokenizer = tiny_tokenizer()
    ar = tiny_ar(tokenizer.config)
    vocab = ar.vocabulary
    encoded = tokenizer.encode(_images())
    out = routed_ar_loss(ar, encoded, torch.tensor([0, 3, 10, 7]), drop_visual=torch.tensor([True, False, True, False]))
    # the same function stage 2 trains with
    ce = prologue_ar_loss(out.logits, out.targets, vocab)
    assert torch.equal(out.loss, ce.loss) and torch.equal(out.token_losses, ce.token_loss)
    # by hand: position t predicts token t + 1, mean over the B * (K + 1 + N) predictions
    log_q = out.logits[:, :-1].detach().double().log_softmax(-1)
    manual = -log_q.gather(-1, out.targets[:, 1:, None]).squeeze(-1)
    assert manual.shape == (4, vocab.num_generated_tokens)
    torch.testing.assert_close(out.token_losses.double(), manual, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.loss.double(), manual.mean(), rtol=1e-5, atol=1e-6)
    correct = (log_q.argmax(-1) == out.targets[:, 1:]).double()
    for name, positions in vocab.segment_positions.items():  # prologue [0, K), EOS K, visual after
        torch.testing.assert_close(out.metrics[f"ar_ce_{name}"].double(), manual[:, positions].mean(), rtol=1e-5, atol=1e-6)
        assert float(out.metrics[f"ar_acc_{name}"]) == pytest.approx(float(correct[:, positions].mean()))
    assert float(out.metrics["ar_visual_dropped_fraction"]) == 0.5


def test_ar_cross_entropy_soft_prologue_targets_and_errors():
    tokenizer = tiny_tokenizer()
    ar = tiny_ar(tokenizer.config)
    vocab = ar.vocabulary
    encoded = tokenizer.encode(_images())
    ids = vocab.build_sequence(torch.full((4,), 10), encoded.visual_ids, encoded.prologue_ids)
    logits = torch.randn(4, vocab.sequence_length, vocab.vocab_size, generator=torch.Generator().manual_seed(0))
    hard = prologue_ar_loss(logits, ids, vocab)
    soft = prologue_ar_loss(logits, ids, vocab, soft_prologue_targets=encoded.prologue_soft_onehot)
    torch.testing.assert_close(soft.token_loss, hard.token_loss, rtol=1e-6, atol=1e-6)  # p~ is the one-hot forward
    torch.testing.assert_close(soft.segment_stats, hard.segment_stats, rtol=1e-6, atol=1e-5)
    with pytest.raises(ValueError, match=r"soft_prologue_targets must have shape \[4, 4, 16\]"):
        prologue_ar_loss(logits, ids, vocab, soft_prologue_targets=encoded.prologue_soft_onehot[:, :2])
    flat = tiny_ar(tiny_tokenizer(num_prologue_tokens=0).config).vocabulary
    flat_ids = flat.build_sequence(torch.full((4,), 10), encoded.visual_ids)
    flat_logits = torch.zeros(4, flat.sequence_length, flat.vocab_size)
    with pytest.raises(ValueError, match="num_prologue_tokens=0"):
        prologue_ar_loss(flat_logits, flat_ids, flat, soft_prologue_targets=encoded.prologue_soft_onehot)
    flat_out = prologue_ar_loss(flat_logits, flat_ids, flat)  # uniform logits: CE = log(vocab) everywhere
    torch.testing.assert_close(flat_out.loss, torch.tensor(math.log(flat.vocab_size)))
    assert flat_out.segment_stats[:2].sum() == 0 and flat_out.segment_stats[2, 2] == 4 * flat.num_visual_tokens


# ------------------------------------------------------------------------------------------------ targets
def test_hard_targets_carry_no_gradient_soft_targets_do():
    tokenizer = tiny_tokenizer()
    ar = tiny_ar(tokenizer.config)
    vocab = ar.vocabulary
    encoded = tokenizer.encode(_images())
    labels = torch.full((4,), 10)
    mask = torch.zeros(4, dtype=torch.bool)
    soft = encoded.prologue_soft_onehot

    def grad_wrt_soft_onehot(flag):
        captured = {}
        handle = soft.register_hook(lambda g: captured.setdefault("g", g.clone()))
        out = routed_ar_loss(ar, encoded, labels, drop_visual=mask, prologue_target_gradient=flag)
        (g,) = torch.autograd.grad(out.loss, soft, retain_graph=True)
        handle.remove()
        return out, g

    hard_out, hard_grad = grad_wrt_soft_onehot(False)
    soft_out, soft_grad = grad_wrt_soft_onehot(True)
    # same forward value (p~ equals the hard one-hot in the forward pass)
    torch.testing.assert_close(soft_out.loss, hard_out.loss, rtol=1e-6, atol=1e-6)
    # the extra gradient is exactly d/dp~ of -sum p~ log q at the K prologue positions, averaged over B * T tokens
    k, t = vocab.num_prologue_tokens, vocab.num_generated_tokens
    log_q = hard_out.logits[:, :k].float().log_softmax(-1)[..., vocab.prologue_offset : vocab.prologue_offset + vocab.prologue_vocab_size]
    expected_extra = -log_q.detach() / (4 * t)
    torch.testing.assert_close(soft_grad - hard_grad, expected_extra, rtol=1e-4, atol=1e-7)
    assert float((soft_grad - hard_grad).abs().sum()) > 0


# ------------------------------------------------------------------------------------------------ stage-1 model
def test_generator_and_discriminator_terms_touch_disjoint_parameters():
    torch.manual_seed(0)
    tokenizer = tiny_tokenizer().train()
    ar = tiny_ar(tokenizer.config).train()
    disc = PrologueDiscriminator(PrologueDiscriminatorConfig(hidden_size=8))
    config = PrologueStage1LossConfig(perceptual_loss="none", lecam_weight=0.001)
    model = PrologueStage1Model(tokenizer, ar, disc, config)
    out = model(_images(), global_step=0)
    out.generator_loss.backward(retain_graph=True)
    assert all(p.grad is None for p in disc.parameters())  # the generator saw D through detached weights
    assert tokenizer.decoder.output_layer.weight.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)
    out.discriminator_loss.backward()
    assert all(p.grad is None for p in tokenizer.parameters()) and all(p.grad is None for p in ar.parameters())
    assert all(p.grad is not None for p in disc.parameters())
    for key in ("gan_generator", "discriminator", "lecam", "d_real_logit", "d_fake_logit"):
        assert key in out.metrics
    # LeCam EMA moved by (1 - 0.999) * mean logit from 0
    torch.testing.assert_close(disc.lecam_real_ema, 0.001 * out.metrics["d_real_logit"], rtol=1e-4, atol=1e-8)


def test_gan_start_step_and_r1_schedule():
    torch.manual_seed(0)
    tokenizer = tiny_tokenizer().train()
    ar = tiny_ar(tokenizer.config).train()
    disc = PrologueDiscriminator(PrologueDiscriminatorConfig(hidden_size=8))
    model = PrologueStage1Model(tokenizer, ar, disc, PrologueStage1LossConfig(perceptual_loss="none", gan_start_step=5, r1_weight=0.01, r1_interval=3))
    before = model(_images(), global_step=4)
    assert "gan_generator" not in before.metrics and float(before.discriminator_loss.detach()) == 0.0
    before.loss.backward()  # the discriminator is in the graph with an exactly-zero gradient (DDP sees it used)
    assert all(p.grad is not None and p.grad.abs().sum() == 0 for p in disc.parameters())
    assert "r1" in model(_images(), global_step=5).metrics  # (5 + 1) % 3 == 0
    assert "r1" not in model(_images(), global_step=6).metrics


def test_class_labels_for_the_compact_ar():
    labels = torch.tensor([0, 3, -1, 9])
    assert prepare_class_labels(labels, 4, 10, 0.0, "cpu").tolist() == [0, 3, 10, 9]
    assert prepare_class_labels(labels, 4, 10, 1.0, "cpu").tolist() == [10] * 4
    assert prepare_class_labels(None, 2, 10, 0.0, "cpu").tolist() == [10, 10]
    torch.manual_seed(0)
    dropped = prepare_class_labels(torch.zeros(4000, dtype=torch.long), 4000, 10, 0.1, "cpu")
    assert abs(float((dropped == 10).float().mean()) - 0.1) < 0.02


# ------------------------------------------------------------------------------------------------ GAN terms
def test_gan_losses_match_hand_computation():
    real = torch.tensor([[2.0, -1.0]])
    fake = torch.tensor([[0.5, -3.0]])
    sp = lambda x: math.log1p(math.exp(x))  # noqa: E731
    vanilla_d = (sp(-2.0) + sp(1.0)) / 2 + (sp(0.5) + sp(-3.0)) / 2
    assert discriminator_loss(real, fake, "vanilla").item() == pytest.approx(vanilla_d, rel=1e-6)
    hinge_d = 0.5 * ((0.0 + 2.0) / 2 + (1.5 + 0.0) / 2)
    assert discriminator_loss(real, fake, "hinge").item() == pytest.approx(hinge_d, rel=1e-6)
    assert generator_adversarial_loss(fake, "vanilla").item() == pytest.approx((sp(-0.5) + sp(3.0)) / 2, rel=1e-6)
    assert generator_adversarial_loss(fake, "hinge").item() == pytest.approx(1.25, rel=1e-6)
    lecam = lecam_regularizer(real, fake, torch.tensor(0.2), torch.tensor(0.1))
    assert lecam.item() == pytest.approx(((1.9**2) + 0) / 2 + (0 + 3.2**2) / 2, rel=1e-6)
    with pytest.raises(ValueError, match="kind"):
        discriminator_loss(real, fake, "wgan")


def test_adaptive_gan_weight():
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    rec = (3.0 * w).sum()  # grad (3, 3), norm 3*sqrt(2)
    gan = (w * torch.tensor([1.0, 0.0])).sum()  # grad (1, 0), norm 1
    assert adaptive_gan_weight(rec, gan, w).item() == pytest.approx(3 * math.sqrt(2) / (1 + 1e-4), rel=1e-6)


def test_visual_straight_through_onehot():
    logits = torch.tensor([[[0.9, 0.1, -0.2]]], requires_grad=True)
    soft = straight_through_onehot(logits, temperature=1.0)
    assert torch.equal(soft.detach(), torch.tensor([[[1.0, 0.0, 0.0]]]))
    (soft * torch.tensor([0.0, 1.0, 0.0])).sum().backward()
    p = torch.softmax(logits.detach(), -1)[0, 0]
    expected = torch.tensor([-p[1] * p[0], p[1] * (1 - p[1]), -p[1] * p[2]])  # softmax Jacobian row 1
    torch.testing.assert_close(logits.grad[0, 0], expected, rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------------------------------------ perceptual
def test_perceptual_losses_fail_clearly_without_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    with pytest.raises(PerceptualWeightsUnavailableError, match="perceptual_loss='none'"):
        build_perceptual_loss("lpips-vgg")
    with pytest.raises(PerceptualWeightsUnavailableError, match="convnext_small"):
        build_perceptual_loss("convnext-s")
    with pytest.raises(PerceptualWeightsUnavailableError):  # also through the stage-1 model's default config
        PrologueStage1Model(tiny_tokenizer(), tiny_ar(tiny_tokenizer().config), None, PrologueStage1LossConfig(gan_weight=0))
    assert build_perceptual_loss("none") is None


def test_lpips_untrained_trunk_is_explicit_and_uses_shipped_heads():
    import lpips

    loss = build_perceptual_loss("lpips-vgg-untrained-trunk")
    heads = torch.load(os.path.join(os.path.dirname(lpips.__file__), "weights", "v0.1", "vgg.pth"), map_location="cpu", weights_only=True)
    assert torch.equal(loss.lpips.lin0.model[-1].weight, heads["lin0.model.1.weight"])  # calibrated, not random
    x = _images(2)
    d = loss(x.flip(0), x)
    assert d.shape == (2,) and bool((d > 0).all())
    assert torch.equal(loss(x, x), torch.zeros(2))
    loss.train()
    assert not loss.training  # a metric stays in eval mode (LPIPS heads have dropout)


def test_lpips_loads_local_vgg_weights(tmp_path):
    from safetensors.torch import save_file
    from torchvision.models import vgg16

    torch.manual_seed(0)
    features = {f"features.{k}": v for k, v in vgg16().features.state_dict().items()}
    path = tmp_path / "vgg16.safetensors"
    save_file(features, str(path))
    loss = LPIPSVGGLoss(str(path))
    trunk = dict(loss.lpips.net.named_parameters())
    assert len(trunk) == 26  # the 13 conv layers of VGG16, weight + bias
    assert torch.equal(trunk["slice1.0.weight"], features["features.0.weight"])
    assert torch.equal(trunk["slice5.28.bias"], features["features.28.bias"])
    assert all(not p.requires_grad for p in loss.parameters())


def test_adaptive_gan_weight_in_the_stage1_model():
    torch.manual_seed(0)
    tokenizer = tiny_tokenizer().train()
    disc = PrologueDiscriminator(PrologueDiscriminatorConfig(hidden_size=8))
    model = PrologueStage1Model(
        tokenizer, tiny_ar(tokenizer.config).train(), disc, PrologueStage1LossConfig(perceptual_loss="none", adaptive_gan_weight=True)
    )
    out = model(_images())
    weight = float(out.metrics["gan_weight"])
    assert weight > 0 and weight != pytest.approx(0.1)  # 0.1 x ||grad L_rec|| / ||grad GAN_G|| at the last layer
    out.loss.backward()
    assert tokenizer.decoder.output_layer.weight.grad.abs().sum() > 0
