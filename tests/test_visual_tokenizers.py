"""Frozen visual-tokenizer adapters on tiny random-init instances of every supported class (nothing downloads)."""

import copy

import pytest
import torch

from prologue_hf.identity import weights_sha256
from prologue_hf.models.visual_tokenizers import (
    VISUAL_TOKENIZER_ADAPTERS,
    ChameleonVQVAEAdapter,
    DiffusersVQModelAdapter,
    Emu3VQVAEAdapter,
    JanusVQVAEAdapter,
    PrologueTokenizerAdapter,
    adapter_for_model,
    check_identity,
    load_visual_tokenizer,
)
from prologue_hf.testing import tiny_tokenizer
from prologue_hf.testing_post import (
    ADAPTER_NAMES,
    TINY_CODEBOOK_SIZE,
    tiny_chameleon_vqvae,
    tiny_emu3_vqvae,
    tiny_janus_vqvae,
    tiny_visual_tokenizer,
    tiny_vqmodel,
)


@pytest.fixture(scope="module")
def adapters():
    return {name: tiny_visual_tokenizer(name) for name in ADAPTER_NAMES}


def _images(adapter, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, adapter.image_size, adapter.image_size, generator=g) * 2 - 1


# ---------------------------------------------------------------------------------------------- geometry
def test_registry_names_every_adapter():
    assert set(VISUAL_TOKENIZER_ADAPTERS) == set(ADAPTER_NAMES)


@pytest.mark.parametrize(
    "name, codebook, grid, feature_dim, image_size",
    [
        ("prologue", 64, (4, 4), 64, 32),
        ("diffusers_vqmodel", TINY_CODEBOOK_SIZE, (4, 4), 4, 16),
        ("janus_vqvae", TINY_CODEBOOK_SIZE, (4, 4), 32, 16),
        ("emu3_vqvae", TINY_CODEBOOK_SIZE, (4, 4), 4, 16),
        ("chameleon_vqvae", TINY_CODEBOOK_SIZE, (4, 4), 32, 16),
    ],
)
def test_round_trip_shapes_ranges_and_features(adapters, name, codebook, grid, feature_dim, image_size):
    adapter = adapters[name]
    assert (adapter.codebook_size, adapter.grid_shape, adapter.feature_dim, adapter.image_size) == (
        codebook, grid, feature_dim, image_size
    )
    x = _images(adapter)
    out = adapter.tokenize(x)
    assert out.visual_ids.shape == (2, 16) and out.visual_ids.dtype == torch.long
    assert 0 <= int(out.visual_ids.min()) and int(out.visual_ids.max()) < codebook
    assert out.features.shape == (2, 16, feature_dim)
    assert not out.features.requires_grad
    # deterministic, and encode / features are the same pass
    assert torch.equal(adapter.encode(x), out.visual_ids)
    assert torch.equal(adapter.features(x), out.features)
    if adapter.can_decode:
        pixels = adapter.decode(out.visual_ids)
        assert pixels.shape == (2, 3, image_size, image_size) and pixels.dtype == torch.float32
        assert torch.isfinite(pixels).all()
        assert torch.equal(adapter.decode(out.visual_ids), pixels)


def test_model_is_frozen_and_stays_frozen(adapters):
    for adapter in adapters.values():
        assert not adapter.model.training
        assert not any(p.requires_grad for p in adapter.model.parameters())
        x = _images(adapter).requires_grad_(True)
        assert adapter.features(x).grad_fn is None  # no graph into the frozen encoder


# ---------------------------------------------------------------------------------------------- native agreement
def test_vqmodel_ids_features_raster_order_by_hand(adapters):
    adapter = adapters["diffusers_vqmodel"]
    vq, x = adapter.model, _images(adapter)
    out = adapter.tokenize(x)
    with torch.no_grad():
        latents = vq.encode(x).latents  # [B, C, h, w] pre-quantisation
    codebook = vq.quantize.embedding.weight
    for b, i, j in [(0, 0, 0), (0, 1, 3), (1, 3, 2)]:
        vector = latents[b, :, i, j]
        assert torch.equal(out.features[b, i * 4 + j], vector)  # raster order: row i, column j
        assert int(out.visual_ids[b, i * 4 + j]) == int(((codebook - vector) ** 2).sum(-1).argmin())


def test_vqmodel_decode_equals_its_own_id_path_and_forward():
    vq = tiny_vqmodel()
    adapter = DiffusersVQModelAdapter(vq)
    x = _images(adapter)
    ids = adapter.encode(x)
    pixels = adapter.decode(ids)
    # VQModel's own "decode from indices" branch (lookup_from_codebook=True) on the very same weights
    lookup = tiny_vqmodel()
    lookup.register_to_config(lookup_from_codebook=True)
    with torch.no_grad():
        native = lookup.decode(ids.reshape(-1), force_not_quantize=True, shape=(2, 4, 4, 4)).sample
        forward = vq(x).sample
    assert torch.equal(pixels, native)
    assert torch.equal(DiffusersVQModelAdapter(lookup).decode(ids), pixels)
    # the forward decodes the straight-through latent z + (z_q - z): equal up to float rounding only
    torch.testing.assert_close(pixels, forward, rtol=0, atol=1e-5)


def test_janus_emu3_chameleon_match_their_own_encode_decode(adapters):
    janus, emu3, cham = adapters["janus_vqvae"], adapters["emu3_vqvae"], adapters["chameleon_vqvae"]
    x = _images(janus)
    with torch.no_grad():
        j = janus.model.encode(x)
        assert torch.equal(janus.encode(x), j.image_tokens.view(2, 16))
        assert torch.equal(janus.features(x), j.last_hidden_state.flatten(2).transpose(1, 2))
        assert torch.equal(janus.decode(janus.encode(x)), janus.model(x).decoded_pixel_values)

        e = emu3.model.encode(x, image_sizes=torch.tensor([[16, 16], [16, 16]]))
        assert torch.equal(emu3.encode(x), torch.stack(e.image_tokens).view(2, 16))
        assert torch.equal(emu3.features(x), e.last_hidden_state[:, 0].flatten(2).transpose(1, 2))
        assert torch.equal(emu3.decode(emu3.encode(x)), emu3.model.decode(torch.stack(e.image_tokens)))

        # Chameleon: ChameleonImageProcessor feeds x_uint8 * 0.0078 - 1; the adapter maps [-1, 1] there
        uint8 = torch.randint(0, 256, (2, 3, 16, 16), generator=torch.Generator().manual_seed(1))
        c = cham.model.encode(uint8.float() * 0.0078 - 1)
        assert torch.equal(cham.encode(uint8.float() / 127.5 - 1), c.image_tokens.view(2, 16))


def test_prologue_tokenizer_adapter_matches_tokenizer(adapters):
    adapter = adapters["prologue"]
    tok = adapter.model
    x = _images(adapter)
    with torch.no_grad():
        encoded = tok.encode(x)
        assert torch.equal(adapter.encode(x), encoded.visual_ids)
        assert torch.equal(adapter.features(x), encoded.encoder_hidden_states)  # 2D: no queries, all patch tokens
        assert torch.equal(adapter.decode(encoded.visual_ids), tok.decode(encoded.visual_ids).pixel_values)
        torch.testing.assert_close(adapter.decode(encoded.visual_ids), tok(x).reconstruction, rtol=0, atol=1e-5)
    # a "prologue" tokenizer is used through its visual tokens only; its features are the patch positions
    prologue_tok = tiny_tokenizer()
    with torch.no_grad():
        hidden = prologue_tok.encode(x).encoder_hidden_states
    assert torch.equal(PrologueTokenizerAdapter(prologue_tok).features(x), hidden[:, :16])


def test_input_range_mapping_is_applied_both_ways():
    vq = tiny_vqmodel()
    default, unit = DiffusersVQModelAdapter(vq), DiffusersVQModelAdapter(vq, input_range=(0.0, 1.0))
    seen = []
    hook = vq.encoder.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    x = _images(default)
    try:
        default.encode(x)
        unit.encode(x)
    finally:
        hook.remove()
    assert torch.equal(seen[0], x)  # [-1, 1] models get the input bit for bit
    torch.testing.assert_close(seen[1], (x + 1) / 2, rtol=0, atol=1e-7)
    ids = unit.encode(x)
    torch.testing.assert_close(unit.decode(ids), default.decode(ids) * 2 - 1, rtol=0, atol=1e-6)
    assert ChameleonVQVAEAdapter.default_input_range == pytest.approx((-1.0, 0.989))


# ---------------------------------------------------------------------------------------------- errors
def test_chameleon_decode_explains_it_needs_a_decoder(adapters):
    cham = adapters["chameleon_vqvae"]
    ids = cham.encode(_images(cham))
    with pytest.raises(NotImplementedError, match="encode-only.*decoder"):
        cham.decode(ids)


def test_bad_inputs_raise_clear_value_errors(adapters):
    adapter = adapters["janus_vqvae"]
    with pytest.raises(ValueError, match=r"\[B, 3, 16, 16\]"):
        adapter.encode(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="float"):
        adapter.encode(torch.zeros(1, 3, 16, 16, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        adapter.encode(torch.full((1, 3, 16, 16), 200.0))
    with pytest.raises(ValueError, match=r"\[0, 32\)"):
        adapter.decode(torch.full((1, 16), 32))
    with pytest.raises(ValueError, match=r"\[B, 16\]"):
        adapter.decode(torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        adapter.decode(torch.zeros(1, 16))


def test_bad_construction_raises_clear_value_errors():
    with pytest.raises(ValueError, match="wraps a JanusVQVAE, got VQModel"):
        JanusVQVAEAdapter(tiny_vqmodel())
    with pytest.raises(ValueError, match="image_size must be 4 \\* 4 = 16"):
        JanusVQVAEAdapter(tiny_janus_vqvae(), image_size=32)
    with pytest.raises(ValueError, match="image_size is required"):
        Emu3VQVAEAdapter(tiny_emu3_vqvae())
    with pytest.raises(ValueError, match="multiple of the ChameleonVQVAE downsampling factor 4"):
        ChameleonVQVAEAdapter(tiny_chameleon_vqvae(), image_size=18)
    with pytest.raises(ValueError, match="low < high"):
        DiffusersVQModelAdapter(tiny_vqmodel(), input_range=(1.0, -1.0))
    with pytest.raises(ValueError, match="1D"):
        PrologueTokenizerAdapter(tiny_tokenizer(tokenizer_type="1d", num_prologue_tokens=0, num_latent_tokens=8))
    with pytest.raises(ValueError, match="no visual-tokenizer adapter for Linear"):
        adapter_for_model(torch.nn.Linear(2, 2))


def test_adapter_for_model_dispatches_on_the_model_class():
    for model, cls in [
        (tiny_vqmodel(), DiffusersVQModelAdapter),
        (tiny_janus_vqvae(), JanusVQVAEAdapter),
        (tiny_chameleon_vqvae(), ChameleonVQVAEAdapter),
        (tiny_tokenizer(), PrologueTokenizerAdapter),
    ]:
        assert type(adapter_for_model(model)) is cls
    emu3 = adapter_for_model(tiny_emu3_vqvae(), image_size=16)
    assert type(emu3) is Emu3VQVAEAdapter and adapter_for_model(emu3) is emu3


# ---------------------------------------------------------------------------------------------- identity / reload
@pytest.mark.parametrize("name, build", [("diffusers_vqmodel", tiny_vqmodel), ("janus_vqvae", tiny_janus_vqvae)])
def test_identity_save_and_reload_from_a_local_folder(tmp_path, name, build):
    adapter = type(tiny_visual_tokenizer(name))(build(), image_size=16)
    identity = adapter.identity()
    assert identity["adapter_type"] == name and identity["weights_sha256"] == weights_sha256(adapter.model)
    assert identity["grid_shape"] == [4, 4] and identity["codebook_size"] == TINY_CODEBOOK_SIZE
    assert "_name_or_path" not in identity["model_config"]
    adapter.save_pretrained(tmp_path / "tok")
    reloaded = load_visual_tokenizer(identity, str(tmp_path / "tok"))
    assert type(reloaded) is type(adapter) and reloaded.name_or_path == str(tmp_path / "tok")
    x = _images(adapter)
    assert torch.equal(reloaded.encode(x), adapter.encode(x))
    assert torch.equal(reloaded.decode(adapter.encode(x)), adapter.decode(adapter.encode(x)))

    # other weights at the same place: refused (a warning only with verify=False)
    type(adapter)(build(seed=1), image_size=16).save_pretrained(tmp_path / "tok")
    with pytest.raises(ValueError, match="has weights sha256:.*built on"):
        load_visual_tokenizer(identity, str(tmp_path / "tok"))
    assert load_visual_tokenizer(identity, str(tmp_path / "tok"), verify=False).codebook_size == TINY_CODEBOOK_SIZE


def test_identity_shape_mismatch_and_unknown_type_are_errors(adapters):
    identity = adapters["janus_vqvae"].identity(with_weights=False)
    with pytest.raises(ValueError, match="codebook_size is 32, expected 64"):
        check_identity(adapters["janus_vqvae"], {**identity, "codebook_size": 64})
    with pytest.raises(ValueError, match="adapter_type"):
        check_identity(adapters["emu3_vqvae"], identity)
    with pytest.raises(ValueError, match="unknown visual-tokenizer adapter 'nope'"):
        load_visual_tokenizer({**identity, "adapter_type": "nope"}, "anywhere")


def test_deepcopy_shares_the_frozen_tokenizer(adapters):
    adapter = adapters["diffusers_vqmodel"]
    assert copy.deepcopy({"a": adapter})["a"] is adapter
