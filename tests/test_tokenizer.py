import numpy as np
import PIL.Image
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel

from prologue_hf import PrologueTokenizerConfig, PrologueTokenizerModel
from prologue_hf.models.modeling_prologue_tokenizer import patchify, unpatchify
from prologue_hf.testing import tiny_ar, tiny_tokenizer, tiny_tokenizer_config


def _images(batch=2, seed=0):
    return torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_patchify_layout_and_inverse():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float).reshape(2, 3, 4, 4)
    patches = patchify(x, 2)
    assert patches.shape == (2, 4, 12)
    # patch 1 = rows 0-1, cols 2-3; inside a patch the channel index is fastest: (p1, p2, c)
    expected = torch.stack([x[0, c, r, col] for r in (0, 1) for col in (2, 3) for c in range(3)])
    assert torch.equal(patches[0, 1], expected)
    assert torch.equal(unpatchify(patches, 2, 2), x)


def test_encode_decode_shapes_and_ranges():
    tok = tiny_tokenizer()
    out = tok.encode(_images())
    assert out.visual_ids.shape == (2, 16) and out.prologue_ids.shape == (2, 4)
    assert int(out.visual_ids.max()) < 64 and int(out.prologue_ids.max()) < 16
    assert out.prologue_soft_onehot.shape == (2, 4, 16)
    assert torch.equal(out.prologue_soft_onehot.argmax(-1), out.prologue_ids)
    assert out.encoder_hidden_states.shape == (2, 20, 64)
    pixels = tok.decode(out.visual_ids).pixel_values
    assert pixels.shape == (2, 3, 32, 32)
    # decoding the ids equals decoding the straight-through codes of the training forward
    recon = tok(_images()).reconstruction
    torch.testing.assert_close(pixels, recon, atol=1e-5, rtol=1e-5)


def test_prologue_tokens_never_reach_the_decoder():
    tok = tiny_tokenizer()
    x = _images()
    out = tok.encode(x)
    with torch.no_grad():
        tok.prologue_quantizer.embedding.weight.mul_(-3.0)
        tok.encoder.queries.add_(1.0)
    out2 = tok.encode(x)
    assert not torch.equal(out.prologue_quantized, out2.prologue_quantized)
    # queries attend to patches but patches also attend to queries: visual ids may move; the decoder input is the
    # visual codes only, so decoding fixed ids is unaffected by anything prologue.
    torch.testing.assert_close(tok.decode(out.visual_ids).pixel_values, tok.decode(out.visual_ids).pixel_values)
    assert tok.decoder.input_layer.in_features == tok.config.codebook_dim


def test_2d_and_1d_modes():
    tok2d = PrologueTokenizerModel(tiny_tokenizer_config(num_prologue_tokens=0)).eval()
    assert tok2d.config.tokenizer_type == "2d" and tok2d.prologue_quantizer is None
    out = tok2d.encode(_images())
    assert out.prologue_ids is None and out.visual_ids.shape == (2, 16)
    tok1d = PrologueTokenizerModel(tiny_tokenizer_config(tokenizer_type="1d", num_prologue_tokens=0, num_latent_tokens=8)).eval()
    out = tok1d.encode(_images())
    assert out.visual_ids.shape == (2, 8) and out.prologue_ids is None
    assert tok1d.decode(out.visual_ids).pixel_values.shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match="num_prologue_tokens must be 0"):
        tiny_tokenizer_config(tokenizer_type="2d", num_prologue_tokens=4)


def test_gradient_routing_of_a_prologue_only_ar_loss():
    """A loss on an AR that sees only the prologue embeddings p~ @ W_emb reaches the encoder through the prologue
    path (queries, prologue quantizer) and nothing of the visual codebook or decoder."""
    tok = tiny_tokenizer().train()
    ar = tiny_ar(tok.config).train()
    out = tok.encode(_images())
    vocab = ar.vocabulary
    w = ar.get_input_embeddings().weight[vocab.prologue_offset : vocab.prologue_offset + vocab.prologue_vocab_size]
    prologue_embeds = out.prologue_soft_onehot @ w  # [B, K, hidden]
    loss = ar(inputs_embeds=prologue_embeds, labels=(out.prologue_ids + vocab.prologue_offset)).loss
    loss.backward()
    assert tok.encoder.queries.grad is not None and tok.encoder.queries.grad.abs().sum() > 0
    assert tok.prologue_quantizer.proj_in.weight.grad.abs().sum() > 0
    assert tok.prologue_quantizer.embedding.weight.grad.abs().sum() > 0
    assert tok.visual_quantizer.embedding.weight.grad is None
    assert tok.visual_quantizer.proj_in.weight.grad is None
    assert all(p.grad is None for p in tok.decoder.parameters())


def test_save_load_round_trip_is_bit_exact(tmp_path):
    tok = tiny_tokenizer(seed=3)
    tok.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    reloaded = PrologueTokenizerModel.from_pretrained(tmp_path)
    assert not reloaded.training
    for key, value in tok.state_dict().items():
        assert torch.equal(value, reloaded.state_dict()[key]), key
    saved = load_file(tmp_path / "model.safetensors")
    assert set(saved) == set(tok.state_dict())
    x = _images()
    assert torch.equal(tok.encode(x).visual_ids, reloaded.encode(x).visual_ids)
    assert torch.equal(tok(x).reconstruction, reloaded(x).reconstruction)
    auto = AutoModel.from_pretrained(tmp_path)
    assert isinstance(auto, PrologueTokenizerModel)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), PrologueTokenizerConfig)


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.zeros(2, 1, 32, 32), r"shape \[B, 3, 32, 32\]"),
        (torch.zeros(2, 3, 64, 64), r"shape \[B, 3, 32, 32\]"),
        (torch.zeros(2, 3, 32, 32, dtype=torch.uint8), "float tensor"),
        (torch.zeros(3, 32, 32), "pixel_values must be a tensor of shape"),
    ],
)
def test_bad_pixel_values(bad, match):
    with pytest.raises(ValueError, match=match):
        tiny_tokenizer().encode(bad)


def test_bad_visual_ids():
    tok = tiny_tokenizer()
    with pytest.raises(ValueError, match=r"visual_ids must have shape \[B, 16\]"):
        tok.decode(torch.zeros(2, 15, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 64\)"):
        tok.decode(torch.full((2, 16), 64))


def test_config_validation():
    with pytest.raises(ValueError, match="multiple of patch_size"):
        tiny_tokenizer_config(image_size=30)
    with pytest.raises(ValueError, match="rope_axes_dim"):
        tiny_tokenizer_config(rope_axes_dim=[4, 4, 4])
    with pytest.raises(ValueError, match="tokenizer_type"):
        tiny_tokenizer_config(tokenizer_type="3d")


def test_preprocess_postprocess_round_trip():
    rng = np.random.default_rng(0)
    arrays = rng.integers(0, 256, size=(2, 32, 32, 3), dtype=np.uint8)
    pils = [PIL.Image.fromarray(a) for a in arrays]
    pixels = PrologueTokenizerModel.preprocess(pils)
    assert pixels.shape == (2, 3, 32, 32) and pixels.dtype == torch.float32
    torch.testing.assert_close(pixels, torch.from_numpy(arrays).permute(0, 3, 1, 2).float() / 127.5 - 1)
    assert torch.equal(PrologueTokenizerModel.postprocess(pixels, "uint8"), torch.from_numpy(arrays).permute(0, 3, 1, 2))
    back = PrologueTokenizerModel.postprocess(pixels, "pil")
    assert np.array_equal(np.asarray(back[1]), arrays[1])
    assert PrologueTokenizerModel.postprocess(pixels, "np").shape == (2, 32, 32, 3)
    with pytest.raises(ValueError, match="uint8"):
        PrologueTokenizerModel.preprocess(torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match="output_type"):
        PrologueTokenizerModel.postprocess(pixels, "jpeg")


@pytest.mark.parametrize("preset, encoder_m, decoder_m", [("B", 86, 86), ("L", 86, 305)])
def test_paper_preset_parameter_counts_on_meta(preset, encoder_m, decoder_m):
    with torch.device("meta"):
        model = PrologueTokenizerModel(PrologueTokenizerConfig.from_preset(preset))
    encoder = sum(p.numel() for p in model.encoder.parameters()) / 1e6
    decoder = sum(p.numel() for p in model.decoder.parameters()) / 1e6
    assert abs(encoder - encoder_m) / encoder_m < 0.03
    assert abs(decoder - decoder_m) / decoder_m < 0.03
    assert model.config.num_patches == 256 and model.config.num_prologue_tokens == 16
    assert model.config.prologue_codebook_size == 1024


def test_codebook_usage():
    tok = tiny_tokenizer()
    usage = tok.codebook_usage(torch.tensor([0, 0, 1, 1]), "visual")
    assert usage["usage"] == pytest.approx(2 / 64)
    assert usage["perplexity"] == pytest.approx(2.0)
