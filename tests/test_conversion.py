"""Official checkpoint conversion against the official tiny fixture (``../shared/fixtures/official-prologue-tiny``).

Every number compared here was produced by the official Prologue code (README.md / manifest.json of the fixture);
the models compared are built by :mod:`prologue_hf.conversion` from the fixture's shards and config alone.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from prologue_hf import PrologueARForCausalLM, PrologueTokenizerModel
from prologue_hf.conversion import (
    OfficialConfig,
    ar_to_official,
    convert_official_ar,
    convert_official_checkpoint,
    convert_official_joint_ar,
    convert_official_tokenizer,
    load_official_shard,
    official_ar_config,
    official_tokenizer_config,
    save_official_ar,
    shard_name,
)
from prologue_hf.identity import tokenizer_identity
from prologue_hf.models.modeling_prologue_tokenizer import unpatchify
from prologue_hf.pipelines import ProloguePipeline, SamplingParams, generate_ids

REPO = Path(__file__).resolve().parents[1]
AR_VOCAB = 81  # official V + P + EOS of the fixture

# The six greedy runs of the fixture (manifest.json "produced_by"), as official ARModel.sampling keyword arguments.
SAMPLING_RUNS = {
    "nocfg": dict(cfg=0.0),
    "cfg_const2": dict(cfg=2.0, cfg_schedule="constant"),
    "cfg_linear3": dict(cfg=3.0, cfg_schedule="linear"),
    "cfg_cosine4": dict(cfg=4.0, cfg_schedule="cosine", cfg_power=1.75),
    "seg_linear": dict(
        cfg=2.0, semantic_cfg_scale=2.5, semantic_cfg_schedule="linear", semantic_cfg_start=0.0,
        visual_cfg_scale=3.0, visual_cfg_schedule="linear", visual_cfg_start=1.0,
    ),
    "seg_sc": dict(
        cfg=2.0, semantic_cfg_scale=0.7, semantic_cfg_schedule="constant",
        visual_cfg_power=0.2, visual_cfg_scale=3.75, visual_cfg_schedule="cosine",
    ),
}


@functools.lru_cache(maxsize=1)
def _converted(fixture: str) -> tuple[PrologueTokenizerModel, PrologueARForCausalLM]:
    config = OfficialConfig.from_yaml(Path(fixture) / "config.yaml")
    return convert_official_tokenizer(Path(fixture) / "tokenizer", config), convert_official_ar(Path(fixture) / "ar", config)


@functools.lru_cache(maxsize=4)
def _tensors(path: str) -> dict[str, torch.Tensor]:
    return load_file(path)


def _fixture(official_fixture_dir: Path, name: str) -> dict[str, torch.Tensor]:
    return _tensors(str(official_fixture_dir / f"{name}.safetensors"))


def _write_config(official_fixture_dir: Path, tmp_path: Path, **changes) -> Path:
    """A copy of the fixture config with dotted keys changed (``value=None`` deletes the key)."""
    with open(official_fixture_dir / "config.yaml") as handle:
        data = yaml.safe_load(handle)
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        node = data
        for part in parents:
            node = node[part]
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    path = tmp_path / "config.yaml"
    with open(path, "w") as handle:
        yaml.safe_dump(data, handle)
    return path


def _copy_dir(src: Path, dst: Path, skip: tuple[str, ...] = ()) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for file in src.glob("*.safetensors"):
        if file.name not in skip:
            shutil.copyfile(file, dst / file.name)
    return dst


# ------------------------------------------------------------------------------------------------ config mapping
def test_config_mapping_keeps_thetas_axes_and_sizes_apart(official_fixture_dir):
    config = OfficialConfig.from_yaml(official_fixture_dir / "config.yaml")
    tok = official_tokenizer_config(config)
    assert (tok.image_size, tok.patch_size, tok.num_patches, tok.patch_dim) == (32, 8, 16, 192)
    assert (tok.num_prologue_tokens, tok.visual_codebook_size, tok.prologue_codebook_size, tok.codebook_dim) == (4, 64, 16, 8)
    assert tok.rope_axes_dim == [4, 6, 6]
    # patches use Encoder.rope_ctx_theta (2000), queries Encoder.rope_theta (10000)
    assert (tok.patch_rope_theta, tok.query_rope_theta) == (2000.0, 10000.0)
    assert (tok.intermediate_size, tok.decoder_intermediate_size) == (171, 171)  # round(64 * 8/3)
    assert tok.prologue_temperature == 0.1
    ar = official_ar_config(config)
    assert ar.rope_axes_dim == [6, 4, 6] and ar.rope_parameters["rope_theta"] == 10000.0
    assert ar.intermediate_size == 176  # round(64 * 11/4)
    assert (ar.num_classes, ar.vocab_size, ar.vocabulary.null_class_id, ar.vocabulary.eos_token_id) == (10, 92, 91, 80)
    assert ar.use_qk_norm and not ar.tie_word_embeddings and ar.hidden_act == "gelu_pytorch_tanh"
    assert (ar.embedding_dropout, ar.hidden_dropout) == (0.1, 0.1)  # ar_emb_drop / ar_drop of train/ar.yaml


def test_mlp_ratio_is_parsed_as_a_fraction_never_evaluated(tmp_path):
    config = OfficialConfig({"A": {"mlp_ratio": "8/3"}, "B": {"mlp_ratio": 2.75}, "C": {"mlp_ratio": " 11 / 4"},
                             "D": {"mlp_ratio": "__import__('os').getcwd()"}, "E": {"mlp_ratio": "1/0"}})
    assert config.ratio("A.mlp_ratio") == Fraction(8, 3)
    assert config.ratio("B.mlp_ratio") == Fraction(11, 4)
    assert config.ratio("C.mlp_ratio") == Fraction(11, 4)
    for key in ("D.mlp_ratio", "E.mlp_ratio"):
        with pytest.raises(ValueError, match=key):
            config.ratio(key)


def test_unresolved_interpolations_are_refused(tmp_path):
    path = tmp_path / "raw.yaml"
    path.write_text("Encoder:\n  dim: ${dim}\n")
    with pytest.raises(ValueError, match=r"'Encoder\.dim'.*unresolved"):
        OfficialConfig.from_yaml(path)


# ---------------------------------------------------------------------------------------------------- tokenizer
def test_tokenizer_matches_official_outputs(official_fixture_dir):
    tokenizer, _ = _converted(str(official_fixture_dir))
    inputs, ref = _fixture(official_fixture_dir, "inputs"), _fixture(official_fixture_dir, "tokenizer_outputs")
    pixel_values = tokenizer.preprocess(inputs["images_uint8"])
    torch.testing.assert_close(pixel_values, inputs["images"], rtol=0, atol=0)
    with torch.no_grad():
        out = tokenizer.encode(pixel_values)
        recon = tokenizer.decode(out.visual_ids).pixel_values
        recon_from_quant = tokenizer.decode_codes(out.visual_quantized)
    torch.testing.assert_close(out.encoder_hidden_states, ref["enc_hidden"], rtol=1e-5, atol=2e-5)
    torch.testing.assert_close(out.visual_features, ref["visual_z_normed"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.prologue_features, ref["semantic_z_normed"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.visual_logits, ref["visual_logits"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.prologue_logits, ref["semantic_logits"], rtol=1e-5, atol=1e-5)
    assert torch.equal(out.visual_ids, ref["visual_indices"])
    assert torch.equal(out.prologue_ids, ref["semantic_indices"])
    assert torch.equal(torch.cat([out.prologue_ids, out.visual_ids], 1), ref["indices"])  # official order
    torch.testing.assert_close(tokenizer.visual_quantizer.normalized_codebook(), ref["visual_codebook_normed"])
    torch.testing.assert_close(recon, ref["recon_images"], rtol=0, atol=1e-4)
    torch.testing.assert_close(recon_from_quant, unpatchify(ref["recon_patches_from_quant"], 8, 4), rtol=0, atol=1e-4)
    assert ref["recon_images"].abs().max() > 1.0  # the fixture's random weights are far from identity


# ----------------------------------------------------------------------------------------------------------- AR
def test_ar_teacher_forcing_matches_official_logits_and_loss(official_fixture_dir):
    tokenizer, ar = _converted(str(official_fixture_dir))
    inputs, tok, ref = (_fixture(official_fixture_dir, n) for n in ("inputs", "tokenizer_outputs", "ar_outputs"))
    vocab = ar.vocabulary
    sequence = vocab.build_sequence(inputs["class_ids"], tok["visual_indices"], tok["semantic_indices"])
    assert torch.equal(sequence[:, 1:], ref["ar_input_ids"])  # [prologue + 64][EOS=80][visual]
    null = vocab.build_sequence([vocab.num_classes] * 2, tok["visual_indices"], tok["semantic_indices"])
    with torch.no_grad():
        cond = ar(sequence[:, :-1]).logits
        uncond = ar(null[:, :-1]).logits
    torch.testing.assert_close(cond[..., :AR_VOCAB], ref["ar_logits_cond"], rtol=0, atol=1e-4)
    torch.testing.assert_close(uncond[..., :AR_VOCAB], ref["ar_logits_uncond"], rtol=0, atol=1e-4)
    assert not torch.allclose(ref["ar_logits_cond"], ref["ar_logits_uncond"], atol=1e-2)  # the class BOS matters
    # official training CE: over the AR vocabulary (our class columns are not part of it)
    loss = torch.nn.functional.cross_entropy(cond[..., :AR_VOCAB].reshape(-1, AR_VOCAB), ref["ar_input_ids"].reshape(-1))
    torch.testing.assert_close(loss, ref["ar_loss_cond"], rtol=0, atol=1e-5)
    # the official sampling mask is our vocabulary's mask restricted to the AR vocabulary
    assert torch.equal(vocab.logit_mask()[:, :AR_VOCAB], ref["logit_mask"])


@pytest.mark.parametrize("run", sorted(SAMPLING_RUNS))
def test_greedy_sampling_reproduces_official_runs(official_fixture_dir, run):
    tokenizer, ar = _converted(str(official_fixture_dir))
    inputs, ref = _fixture(official_fixture_dir, "inputs"), _fixture(official_fixture_dir, "sampling_outputs")
    params = SamplingParams.from_official(topK=1, **SAMPLING_RUNS[run])  # greedy = official topK=1
    out = generate_ids(ar, inputs["class_ids"], params, generator=torch.Generator().manual_seed(0),
                       return_step_logits=True)
    assert torch.equal(out.ids, ref[f"sample_{run}_ids"])
    final = ref[f"sample_{run}_final_logits"]
    finite = torch.isfinite(final)
    assert torch.equal(torch.isfinite(out.step_logits[..., :AR_VOCAB]), finite)
    torch.testing.assert_close(out.step_logits[..., :AR_VOCAB][finite], final[finite], rtol=0, atol=1e-4)
    with torch.no_grad():
        images = tokenizer.decode(out.visual_ids).pixel_values
    torch.testing.assert_close(images, ref[f"sample_{run}_images"], rtol=0, atol=1e-4)


# -------------------------------------------------------------------------------- folders, CLI and reverse direction
_RELOAD_CHECK = r"""
import sys, torch
sys.modules["prologue_hf.conversion"] = None  # any import of the converter now fails
from safetensors.torch import load_file
from transformers import AutoModel, AutoModelForCausalLM
import prologue_hf
out, fixture = sys.argv[1], sys.argv[2]
tokenizer = AutoModel.from_pretrained(out + "/tokenizer")
ar = AutoModelForCausalLM.from_pretrained(out + "/ar")
assert type(tokenizer).__name__ == "PrologueTokenizerModel" and type(ar).__name__ == "PrologueARForCausalLM"
inputs, tok, ref = (load_file(f"{fixture}/{n}.safetensors") for n in ("inputs", "tokenizer_outputs", "ar_outputs"))
with torch.no_grad():
    enc = tokenizer.encode(tokenizer.preprocess(inputs["images_uint8"]))
    seq = ar.config.vocabulary.build_sequence(inputs["class_ids"], enc.visual_ids, enc.prologue_ids)
    logits = ar(seq[:, :-1]).logits[..., :81]
assert torch.equal(enc.visual_ids, tok["visual_indices"]) and torch.equal(enc.prologue_ids, tok["semantic_indices"])
print("max_logit_error", float((logits - ref["ar_logits_cond"]).abs().max()))
"""


def test_cli_writes_folders_that_reload_without_conversion_code(official_fixture_dir, tmp_path, load_example):
    out = tmp_path / "converted"
    cli = load_example("convert_official_checkpoint")
    written = cli.main([
        "--config", str(official_fixture_dir / "config.yaml"),
        "--tokenizer-dir", str(official_fixture_dir / "tokenizer"),
        "--ar-dir", str(official_fixture_dir / "ar"),
        "--output-dir", str(out), "--no-pipeline",
    ])
    assert written == {"tokenizer": out / "tokenizer", "ar": out / "ar"}
    assert (out / "tokenizer" / "config.json").is_file() and (out / "ar" / "model.safetensors").is_file()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", _RELOAD_CHECK, str(out), str(official_fixture_dir)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert float(result.stdout.split("max_logit_error")[1]) < 1e-4
    # the reverse direction from the written folder: official key layout and config entries
    reverse = cli.main(["--reverse", "--ar-dir", str(out / "ar"), "--output-dir", str(tmp_path / "official"), "--cond-dim", "16"])
    official = load_file(str(reverse["weights"]))
    original = load_file(str(official_fixture_dir / "ar" / "model.safetensors"))
    assert {k: v.shape for k, v in official.items()} == {k: v.shape for k, v in original.items()}
    with open(reverse["config"]) as handle:
        entries = yaml.safe_load(handle)
    assert entries["ARModel"]["rope_axes_dim"] == [6, 4, 6] and entries["ARModel"]["mlp_ratio"] == "176/64"


def test_pipeline_folder_reproduces_an_official_sampling_run(official_fixture_dir, tmp_path):
    written = convert_official_checkpoint(
        official_fixture_dir / "config.yaml", tmp_path, official_fixture_dir / "tokenizer", official_fixture_dir / "ar"
    )
    assert written == {"tokenizer": tmp_path / "tokenizer", "ar": tmp_path / "ar", "pipeline": tmp_path}
    assert (tmp_path / "model_index.json").is_file()
    pipeline = ProloguePipeline.from_pretrained(tmp_path)
    assert pipeline.ar.config.tokenizer_identity == tokenizer_identity(pipeline.tokenizer)
    ref = _fixture(official_fixture_dir, "sampling_outputs")
    # the paper's segmented setting (eval.sh "sc:0.7:3.75:0.2"), greedy
    params = SamplingParams.from_official(topK=1, **SAMPLING_RUNS["seg_sc"])
    out = pipeline([3, 7], sampling=params, generator=torch.Generator().manual_seed(0), output_type="pt", return_ids=True)
    assert torch.equal(out.ids, ref["sample_seg_sc_ids"])
    expected = ((ref["sample_seg_sc_images"] + 1) / 2).clamp(0, 1)  # the pipeline's "pt" output range
    torch.testing.assert_close(out.images, expected, rtol=0, atol=1e-4)


def test_reverse_ar_round_trip(official_fixture_dir, tmp_path):
    _, ar = _converted(str(official_fixture_dir))
    original = load_file(str(official_fixture_dir / "ar" / "model.safetensors"))
    state, entries = ar_to_official(ar, cond_dim=16)
    assert set(state) == set(original)
    for key in state:
        assert state[key].shape == original[key].shape, key
    # unfolded tensors come back exactly (the RoPE permutation is undone; q/k norm weights are 1 + w - 1)
    for key in ("semantic_emb.weight", "bos_emb.weight", "ar_model.out.weight", "uncond_ar_labels",
                "ar_model.layers.1.attn1.to_q.weight", "ar_model.layers.1.attn1.to_kv.weight",
                "ar_model.layers.0.ffn.fc1.weight"):
        assert torch.equal(state[key], original[key]), key
    torch.testing.assert_close(state["ar_model.layers.0.attn1.q_norm.weight"],
                               original["ar_model.layers.0.attn1.q_norm.weight"], rtol=0, atol=1e-6)
    # written in the official layout, with the config entries merged, it converts back to the same function
    paths = save_official_ar(ar, tmp_path / "official", cond_dim=16)
    with open(official_fixture_dir / "config.yaml") as handle:
        data = yaml.safe_load(handle)
    data["ARModel"].update(entries["ARModel"])
    assert entries["z_len"] == data["z_len"] and entries["Quantizer"]["codebook_size"] == data["codebook_size"]
    back = convert_official_ar(paths["weights"].parent, OfficialConfig(data, "merged"))
    ids = _fixture(official_fixture_dir, "ar_outputs")["ar_input_ids"]
    sequence = torch.cat([torch.tensor([[84], [88]]), ids[:, :-1]], dim=1)  # class tokens 3 and 7
    with torch.no_grad():
        torch.testing.assert_close(back(sequence).logits, ar(sequence).logits, rtol=0, atol=1e-4)


def test_tied_embedding_variant(official_fixture_dir, tmp_path):
    """``ARModel.tied_embedding`` (official ar/small.yaml): no ``out.weight``, logits = h @ semantic_emb.T."""
    _, untied = _converted(str(official_fixture_dir))
    state = load_file(str(official_fixture_dir / "ar" / "model.safetensors"))
    del state["ar_model.out.weight"]
    (tmp_path / "ar").mkdir()
    save_file(state, str(tmp_path / "ar" / "model.safetensors"), metadata={"format": "pt"})
    config = _write_config(official_fixture_dir, tmp_path, ARModel__tied_embedding=True)
    tied = convert_official_ar(tmp_path / "ar", config)
    assert tied.config.tie_word_embeddings and tied.lm_head.weight.data_ptr() == tied.get_input_embeddings().weight.data_ptr()
    tied.save_pretrained(tmp_path / "ours")
    reloaded = PrologueARForCausalLM.from_pretrained(tmp_path / "ours")
    ids = _fixture(official_fixture_dir, "ar_outputs")["ar_input_ids"]
    sequence = torch.cat([torch.tensor([[84], [88]]), ids[:, :-1]], dim=1)
    with torch.no_grad():
        hidden = untied.model(sequence).last_hidden_state  # same trunk: only the head differs
        expected = hidden @ state["semantic_emb.weight"].T
        logits = reloaded(sequence).logits
    torch.testing.assert_close(logits[..., :AR_VOCAB], expected, rtol=0, atol=1e-4)


def test_slots_and_wrapper_prefixes(official_fixture_dir, tmp_path):
    _, ar = _converted(str(official_fixture_dir))
    # only the EMA pair present: "ema" converts, "online" names the missing encoder shard
    ema_only = _copy_dir(official_fixture_dir / "tokenizer", tmp_path / "tok", skip=("model.safetensors", "model_1.safetensors"))
    config = official_fixture_dir / "config.yaml"
    convert_official_tokenizer(ema_only, config, weights="ema")
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors.*tokenizer encoder, online"):
        convert_official_tokenizer(ema_only, config, weights="online")
    # DDP / torch.compile wrappers are stripped
    state = load_file(str(official_fixture_dir / "ar" / "model.safetensors"))
    wrapped = {f"module.{k}".replace("ar_model.", "ar_model._orig_mod."): v for k, v in state.items()}
    (tmp_path / "ar").mkdir()
    save_file(wrapped, str(tmp_path / "ar" / "model_1.safetensors"), metadata={"format": "pt"})
    loaded, path = load_official_shard(tmp_path / "ar", 1)
    assert path.name == "model_1.safetensors" and set(loaded) == set(state)
    converted = convert_official_ar(tmp_path / "ar", config, weights="ema")
    for key, value in ar.state_dict().items():
        assert torch.equal(converted.state_dict()[key], value), key
    # --dtype: the folded float32 weights, cast
    half = convert_official_ar(official_fixture_dir / "ar", config, dtype=torch.bfloat16)
    for key, value in ar.state_dict().items():
        assert half.state_dict()[key].dtype == torch.bfloat16
        assert torch.equal(half.state_dict()[key], value.to(torch.bfloat16)), key


# ------------------------------------------------------------------------------------------------------ bad input
def test_missing_shard_names_the_file(official_fixture_dir, tmp_path):
    partial = _copy_dir(official_fixture_dir / "tokenizer", tmp_path / "tok", skip=("model_3.safetensors",))
    with pytest.raises(FileNotFoundError, match=r"model_3\.safetensors.*tokenizer decoder"):
        convert_official_tokenizer(partial, official_fixture_dir / "config.yaml")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        convert_official_ar(tmp_path / "nowhere", official_fixture_dir / "config.yaml")
    assert shard_name(0) == "model.safetensors" and shard_name(5) == "model_5.safetensors"


def test_config_that_does_not_match_the_weights_names_file_and_key(official_fixture_dir, tmp_path):
    config = _write_config(official_fixture_dir, tmp_path, SemanticQuantizer__codebook_size=32)
    with pytest.raises(ValueError, match=r"model_2\.safetensors: key 'semantic_quantizer\.embedding\.weight' has shape \[16, 8\]"):
        convert_official_tokenizer(official_fixture_dir / "tokenizer", config)
    config = _write_config(official_fixture_dir, tmp_path, ARModel__mlp_ratio="3")
    with pytest.raises(ValueError, match=r"model\.safetensors: key 'ar_model\.layers\.0\.ffn\.fc1\.weight'"):
        convert_official_ar(official_fixture_dir / "ar", config)
    config = _write_config(official_fixture_dir, tmp_path, ARModel__tied_embedding=True)
    with pytest.raises(ValueError, match=r"unexpected key 'ar_model\.out\.weight'"):
        convert_official_ar(official_fixture_dir / "ar", config)


def test_a_folder_of_another_family_than_the_config_is_refused(official_fixture_dir, official_fixture, tmp_path):
    # Post keys (semantic_enc.*) under the Prologue config: both families are named
    state = load_file(str(official_fixture_dir / "tokenizer" / "model_2.safetensors"))
    state["semantic_enc.layers.0.attn1.to_q.weight"] = torch.zeros(64, 64)
    post = _copy_dir(official_fixture_dir / "tokenizer", tmp_path / "post")
    save_file(state, str(post / "model_2.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"model_2\.safetensors holds a Prologue-Post encoder.*describes the 'prologue'"):
        convert_official_tokenizer(post, official_fixture_dir / "config.yaml")
    # the Prologue folder under a config that says Prologue-Post
    config = _write_config(official_fixture_dir, tmp_path, share_semantic_encoder=False)
    with pytest.raises(ValueError, match=r"holds a Prologue tokenizer.*describes the 'post' family"):
        convert_official_tokenizer(official_fixture_dir / "tokenizer", config)
    # the 2D baseline's folder under the 1D baseline's config
    one_d = official_fixture("official-1d-tiny") / "config.yaml"
    with pytest.raises(ValueError, match=r"holds a 2D tokenizer.*describes the '1d' family"):
        convert_official_tokenizer(official_fixture("official-2d-tiny") / "tokenizer", one_d)


def test_ar_folder_and_tokenizer_folder_are_not_confused(official_fixture_dir, tmp_path):
    config = official_fixture_dir / "config.yaml"
    # ar_dir pointed at a tokenizer folder: its model.safetensors holds the encoder
    with pytest.raises(ValueError, match=r"is a tokenizer folder.*convert_official_joint_ar"):
        convert_official_ar(official_fixture_dir / "tokenizer", config)
    # an AR shard in a tokenizer slot is refused, naming the file
    joint = _copy_dir(official_fixture_dir / "tokenizer", tmp_path / "joint")
    shutil.copyfile(official_fixture_dir / "ar" / "model.safetensors", joint / "model_5.safetensors")
    with pytest.raises(ValueError, match=r"model_5\.safetensors holds an AR model"):
        convert_official_tokenizer(joint, config, encoder_slot=5)
    # a tokenizer shard where the joint AR should be
    shutil.copyfile(official_fixture_dir / "tokenizer" / "model.safetensors", joint / "model_5.safetensors")
    with pytest.raises(ValueError, match=r"model_5\.safetensors holds a Prologue tokenizer.*not an official AR"):
        convert_official_joint_ar(joint, config)


def test_nonzero_pos_select_mask_is_refused(official_fixture_dir, tmp_path):
    state = load_file(str(official_fixture_dir / "tokenizer" / "model_2.safetensors"))
    state["quantizer.pos_select_mask"][0, 3] = float("-inf")
    masked = _copy_dir(official_fixture_dir / "tokenizer", tmp_path / "masked")
    save_file(state, str(masked / "model_2.safetensors"), metadata={"format": "pt"})
    with pytest.raises(NotImplementedError, match=r"'quantizer\.pos_select_mask' is not all zeros"):
        convert_official_tokenizer(masked, official_fixture_dir / "config.yaml")


@pytest.mark.parametrize(
    "changes, target, match",
    [
        (dict(use_eos=False), "ar", r"'use_eos' = False"),
        (dict(ARModel__rope_input_type="hybrid"), "ar", r"'ARModel\.rope_input_type' = 'hybrid'"),
        (dict(ARModel__conditional_injection="dit"), "ar", r"'ARModel\.conditional_injection'"),
        (dict(ARModel__temperature=2.0), "ar", r"ARModel\.temperature"),
        (dict(ARModel__rope_theta=[10000, 500, 500]), "ar", r"'ARModel\.rope_theta'.*its own base"),
        (dict(Encoder__causal=True), "tokenizer", r"'Encoder\.causal' = True"),
        (dict(Decoder__norm_layer="LayerNorm"), "tokenizer", r"'Decoder\.norm_layer' = 'LayerNorm'"),
        (dict(Encoder__abs_pos=True), "tokenizer", r"'Encoder\.abs_pos' = True"),
        (dict(Encoder__ffn_type="ffn"), "tokenizer", r"'Encoder\.ffn_type' = 'ffn'"),
        (dict(ae_no_label=False), "tokenizer", r"'ae_no_label' = False"),
        (dict(Decoder__rope_theta=10000), "tokenizer", r"Decoder\.rope_theta"),
        (dict(share_semantic_codebook=True), "tokenizer", r"'share_semantic_codebook' = True"),
        (dict(Prologue=False, Encoder__context_type="cross"), "ar", r"'Prologue' = False.*Supported official families"),
    ],
)
def test_unsupported_settings_are_refused(official_fixture_dir, tmp_path, changes, target, match):
    config = _write_config(official_fixture_dir, tmp_path, **changes)
    convert = convert_official_ar if target == "ar" else convert_official_tokenizer
    with pytest.raises(NotImplementedError, match=match):
        convert(official_fixture_dir / target, config)
