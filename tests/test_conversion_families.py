"""Every official family with a fixture converts and reproduces the official outputs (issue 20).

Fixtures: ``tests/fixtures/official-{2d,1d,post,onestage}-tiny``, made with the authors' unmodified code (each README
says how). Each fixture is converted once with ``examples/convert_official_checkpoint.py`` (the family is read from the
folder and config, never given), and every comparison below goes through the *written* folders: the components'
``from_pretrained`` and ``ProloguePipeline.from_pretrained``. The sampling runs and their settings are read from each
fixture's ``manifest.json`` (``sampling_runs``) applied on top of its config, as the official driver did.

Tolerances (fixture READMEs, "Checks and tolerances"): ids exactly; float32 features, logits and reconstructions to
rtol/atol 1e-5 (reconstructions reach ~5 in magnitude: atol 2e-5); per-step logits after classifier-free guidance to
atol 1e-4, because a guidance scale ``w`` multiplies the last-ulp differences by up to ``2w - 1`` (37 in the 1D run)
and the fixtures' own 1- vs 2-thread runs moved them by ~2e-5.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file
from transformers import AutoModel

from prologue_hf import PrologueARForCausalLM, PrologueTokenizerModel
from prologue_hf.conversion import (
    OfficialConfig,
    convert_official_ar,
    convert_official_tokenizer,
    official_family,
)
from prologue_hf.models.modeling_prologue_post import ProloguePostModel
from prologue_hf.models.modeling_prologue_tokenizer import unpatchify
from prologue_hf.pipelines import ProloguePipeline, SamplingParams, generate_ids

FIXTURES = Path(__file__).resolve().parent / "fixtures"
REPO = Path(__file__).resolve().parents[1]

# fixture -> (family read from its config, tokenizer class written, Table A5 preset of its CFG row)
FAMILIES = {
    "official-2d-tiny": ("2d", PrologueTokenizerModel, "2d-B-B"),
    "official-1d-tiny": ("1d", PrologueTokenizerModel, "1d-B-B"),
    "official-post-tiny": ("post", ProloguePostModel, "prologue-post"),
    "official-onestage-tiny": ("onestage", PrologueTokenizerModel, "prologue-onestage"),
}
RUNS = [
    (name, run)
    for name in FAMILIES
    for run in json.loads((FIXTURES / name / "manifest.json").read_text())["sampling_runs"]
]


def _value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def official_run(name: str, run: str) -> SamplingParams:
    """The fixture's sampling run as the official driver applied it: the config's ``cfg``, ``cfg_schedule``,
    ``cfg_power`` and ``temperature`` overridden by the run's ``key=value`` settings (manifest ``sampling_runs``)."""
    config = OfficialConfig.from_yaml(FIXTURES / name / "config.yaml")
    settings = {key: config.get(key) for key in ("cfg", "cfg_schedule", "cfg_power", "temperature")}
    manifest = json.loads((FIXTURES / name / "manifest.json").read_text())
    settings.update({k: _value(v) for k, v in (item.split("=", 1) for item in manifest["sampling_runs"][run])})
    return SamplingParams.from_official(**settings)


@functools.cache
def _tensors(name: str, part: str) -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURES / name / f"{part}.safetensors"))


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """``converted(name)`` -> the output folder of the example script for that fixture (converted once)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("convert_cli", REPO / "examples" / "convert_official_checkpoint.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    cache: dict[str, tuple[Path, dict]] = {}

    def convert(name: str) -> tuple[Path, dict]:
        if name not in cache:
            fixture, out = FIXTURES / name, tmp_path_factory.mktemp(name) / "converted"
            argv = ["--config", str(fixture / "config.yaml"), "--tokenizer-dir", str(fixture / "tokenizer"),
                    "--output-dir", str(out)]
            if (fixture / "ar").is_dir():  # OneStage: the AR is inside the tokenizer folder
                argv += ["--ar-dir", str(fixture / "ar")]
            cache[name] = out, cli.main(argv)
        return cache[name]

    return convert


@functools.cache
def _loaded(out: Path) -> tuple[torch.nn.Module, PrologueARForCausalLM, ProloguePipeline]:
    tokenizer = AutoModel.from_pretrained(out / "tokenizer").eval()
    ar = PrologueARForCausalLM.from_pretrained(out / "ar").eval()
    return tokenizer, ar, ProloguePipeline.from_pretrained(out)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_family_is_read_from_the_config_and_a_pipeline_folder_is_written(converted, name):
    family, tokenizer_class, _ = FAMILIES[name]
    assert official_family(OfficialConfig.from_yaml(FIXTURES / name / "config.yaml")) == family
    out, written = converted(name)
    assert written == {"tokenizer": out / "tokenizer", "ar": out / "ar", "pipeline": out}
    assert (out / "model_index.json").is_file()
    tokenizer, ar, pipeline = _loaded(out)
    assert type(tokenizer) is tokenizer_class and type(pipeline.tokenizer) is tokenizer_class
    assert sorted(p.name for p in out.parent.iterdir()) == ["converted"]  # no staging folder left behind
    # sizes come from the config: K, N and the vocabulary
    vocab = ar.config.vocabulary
    expected_k = {"2d": 0, "1d": 0}.get(family, 4)
    expected_n = 12 if family == "1d" else 16  # the 1D fixture has z_len = 12 latents, x_len = 16 patches
    assert (vocab.num_prologue_tokens, vocab.num_visual_tokens, vocab.num_classes) == (expected_k, expected_n, 10)
    if family == "post":
        assert tokenizer.visual_tokenizer.model.config.tokenizer_type == "2d"
        assert (out / "tokenizer" / "visual_tokenizer" / "config.json").is_file()  # frozen tokenizer stored with it


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_encode_ids_features_and_reconstructions(converted, name):
    family = FAMILIES[name][0]
    tokenizer, _, _ = _loaded(converted(name)[0])
    inputs, ref = _tensors(name, "inputs"), _tensors(name, "tokenizer_outputs")
    pixel_values = tokenizer.preprocess(inputs["images_uint8"])
    torch.testing.assert_close(pixel_values, inputs["images"], rtol=0, atol=0)
    with torch.no_grad():
        out = tokenizer.encode(pixel_values)
        recon = tokenizer.decode(out.visual_ids).pixel_values
    assert torch.equal(out.visual_ids, ref["visual_indices"])
    official_order = [out.visual_ids] if out.prologue_ids is None else [out.prologue_ids, out.visual_ids]
    assert torch.equal(torch.cat(official_order, 1), ref["indices"])  # the official id order: prologue first
    assert torch.equal(ref["indices"], ref["encode_idx"])
    if family in ("2d", "1d"):
        assert out.prologue_ids is None
    else:
        assert torch.equal(out.prologue_ids, ref["semantic_indices"])
        torch.testing.assert_close(out.prologue_features, ref["semantic_z_normed"], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out.prologue_logits, ref["semantic_cosine_logits"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(recon, ref["recon_images"], rtol=1e-5, atol=2e-5)
    assert ref["recon_images"].abs().max() > 1.0  # random weights far from identity: a wrong layer shows
    if family == "post":
        # the prologue encoder's own hidden states, and the frozen 2D tokenizer's internals
        torch.testing.assert_close(out.encoder_hidden_states, ref["semantic_enc_hidden"], rtol=1e-5, atol=2e-5)
        visual = tokenizer.visual_tokenizer.model
        torch.testing.assert_close(out.tokenizer_features, ref["enc_hidden"], rtol=1e-5, atol=2e-5)
        with torch.no_grad():
            out = visual.encode(pixel_values)
    else:
        torch.testing.assert_close(out.encoder_hidden_states, ref["enc_hidden"], rtol=1e-5, atol=2e-5)
        visual = tokenizer
    torch.testing.assert_close(out.visual_features, ref["visual_z_normed"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.visual_logits, ref["visual_cosine_logits"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.visual_quantized, ref["visual_quant"], rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        from_quant = visual.decode_codes(out.visual_quantized)
    config = visual.config
    expected = unpatchify(ref["recon_patches_from_quant"], config.patch_size, config.grid_size)
    torch.testing.assert_close(from_quant, expected, rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_teacher_forced_logits_loss_and_mask(converted, name):
    _, ar, _ = _loaded(converted(name)[0])
    inputs, tok, ref = _tensors(name, "inputs"), _tensors(name, "tokenizer_outputs"), _tensors(name, "ar_outputs")
    vocab = ar.config.vocabulary
    official_vocab = ref["tf_logits_class"].shape[-1]  # V + P + EOS, or V for the baselines
    assert official_vocab == vocab.class_offset
    prologue = tok["semantic_indices"] if vocab.has_prologue else None
    sequence = vocab.build_sequence(inputs["class_ids"], tok["visual_indices"], prologue)
    assert torch.equal(sequence[:, 1:], ref["ar_sequence"])
    null = vocab.build_sequence([vocab.num_classes] * 2, tok["visual_indices"], prologue)
    with torch.no_grad():
        cond = ar(sequence[:, :-1]).logits[..., :official_vocab]
        uncond = ar(null[:, :-1]).logits[..., :official_vocab]
    torch.testing.assert_close(cond, ref["tf_logits_class"], rtol=1e-5, atol=2e-5)
    torch.testing.assert_close(uncond, ref["tf_logits_uncond"], rtol=1e-5, atol=2e-5)
    assert not torch.allclose(ref["tf_logits_class"], ref["tf_logits_uncond"], atol=1e-2)  # the class BOS matters
    loss = torch.nn.functional.cross_entropy(cond.reshape(-1, official_vocab), ref["ar_sequence"].reshape(-1))
    torch.testing.assert_close(loss, ref["tf_loss_class"], rtol=1e-5, atol=1e-5)
    # the official sampling mask (1D: x_len rows, of which the first z_len are used) restricted to our steps
    steps = vocab.num_generated_tokens
    assert torch.equal(vocab.logit_mask()[:, :official_vocab], ref["logit_mask"][:steps])


@pytest.mark.parametrize("name, run", RUNS)
def test_greedy_sampling_runs(converted, name, run):
    out_dir = converted(name)[0]
    tokenizer, ar, _ = _loaded(out_dir)
    inputs, ref = _tensors(name, "inputs"), _tensors(name, "sampling_outputs")
    params = official_run(name, run)
    assert params.top_k == 1  # every fixture run is greedy (official topK=1)
    out = generate_ids(ar, inputs["class_ids"], params, generator=torch.Generator().manual_seed(0),
                       return_step_logits=True)
    assert torch.equal(out.ids, ref[f"{run}__ids"])
    final = ref[f"{run}__final_logits"]
    ours = out.step_logits[..., : final.shape[-1]]
    finite = torch.isfinite(final)
    assert torch.equal(torch.isfinite(ours), finite)
    torch.testing.assert_close(ours[finite], final[finite], rtol=0, atol=1e-4)
    # raw per-step AR logits (before guidance): rows [cond | uncond] = the AR on the sampled prefix
    vocab, batch = ar.config.vocabulary, inputs["class_ids"].shape[0]
    raw = ref[f"{run}__raw_logits"]
    labels = [inputs["class_ids"], torch.full((batch,), vocab.num_classes)][: raw.shape[0] // batch]
    with torch.no_grad():
        prefixes = torch.cat([torch.cat([vocab.class_token_ids(lab)[:, None], out.ids[:, :-1]], 1) for lab in labels])
        logits = ar(prefixes).logits[..., : raw.shape[-1]]
    torch.testing.assert_close(logits, raw, rtol=1e-5, atol=5e-5)
    with torch.no_grad():
        images = tokenizer.decode(out.visual_ids).pixel_values
    torch.testing.assert_close(images, ref[f"{run}__images"], rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("name, run", RUNS)
def test_pipeline_with_the_table_a5_preset_reproduces_the_run(converted, name, run):
    """The run is the family's Table A5 row (``<preset>`` with CFG, ``<preset>-nocfg`` without), greedy."""
    _, ar, pipeline = _loaded(converted(name)[0])
    preset = FAMILIES[name][2] + ("-nocfg" if run == "nocfg" else "")
    params = SamplingParams.from_preset(preset, top_k=1)
    official = official_run(name, run)
    vocab = ar.config.vocabulary
    for ours, theirs in zip(params.guidance_weights(vocab), official.guidance_weights(vocab), strict=True):
        assert (ours is None) == (theirs is None) and (ours is None or ours == pytest.approx(theirs, rel=1e-12))
    assert params.step_settings(vocab) == official.step_settings(vocab)
    ref = _tensors(name, "sampling_outputs")
    out = pipeline([3, 7], sampling=params, generator=torch.Generator().manual_seed(0), output_type="pt",
                   return_ids=True)
    assert torch.equal(out.ids, ref[f"{run}__ids"])
    expected = ((ref[f"{run}__images"] + 1) / 2).clamp(0, 1)  # the pipeline's "pt" range
    torch.testing.assert_close(out.images, expected, rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("name, wrong", [("official-2d-tiny", "online"), ("official-onestage-tiny", "ema")])
def test_the_default_tokenizer_slots_are_the_ones_official_inference_reads(name, wrong):
    """2D reads the EMA pair (ema_reconstruction: true), OneStage the online pair (false); the fixtures' EMA slots
    differ from the online ones on purpose, so the other pair gives other ids."""
    ref = _tensors(name, "tokenizer_outputs")
    pixels = _tensors(name, "inputs")["images"]
    with torch.no_grad():
        other = convert_official_tokenizer(FIXTURES / name / "tokenizer", FIXTURES / name / "config.yaml", wrong)
        assert not torch.equal(other.encode(pixels).visual_ids, ref["visual_indices"])


def test_layer_counts_come_from_the_config(tmp_path):
    """Sizes are read from the config, never assumed: the Post fixture with the last layer of every Transformer
    removed (weights and ``layer_num`` alike) converts into models equal to the full conversion with those layers
    deleted (the visual encoder, decoder, prologue encoder and AR each keep layers 0..L-2 in order)."""
    name = "official-post-tiny"
    fixture = FIXTURES / name
    data = yaml.safe_load((fixture / "config.yaml").read_text())
    sections = {"Encoder": "enc.", "Decoder": "dec.", "SemanticEncoder": "semantic_enc.", "ARModel": "ar_model."}
    last = {prefix: data[section]["layer_num"] - 1 for section, prefix in sections.items()}
    for section in sections:
        data[section]["layer_num"] -= 1
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(data))
    for part in ("tokenizer", "ar"):
        (tmp_path / part).mkdir()
        for shard in sorted((fixture / part).glob("model*.safetensors")):
            state = {k: v for k, v in load_file(str(shard)).items()
                     if not any(k.startswith(f"{prefix}layers.{n}.") for prefix, n in last.items())}
            save_file(state, str(tmp_path / part / shard.name), metadata={"format": "pt"})
    small_tok = convert_official_tokenizer(tmp_path / "tokenizer", tmp_path / "config.yaml")
    small_ar = convert_official_ar(tmp_path / "ar", tmp_path / "config.yaml")
    full_tok = convert_official_tokenizer(fixture / "tokenizer", fixture / "config.yaml")
    full_ar = convert_official_ar(fixture / "ar", fixture / "config.yaml")
    visual = full_tok.visual_tokenizer.model
    for layers in (visual.encoder.layers, visual.decoder.layers, full_tok.prologue_encoder.layers,
                   full_ar.model.layers):
        del layers[-1]
    full_ar.config.num_hidden_layers -= 1
    assert small_ar.config.num_hidden_layers == data["ARModel"]["layer_num"]
    assert len(small_tok.prologue_encoder.layers) == data["SemanticEncoder"]["layer_num"]
    pixels = _tensors(name, "inputs")["images"]
    with torch.no_grad():
        ours, theirs = small_tok.encode(pixels), full_tok.encode(pixels)
        torch.testing.assert_close(ours.encoder_hidden_states, theirs.encoder_hidden_states, rtol=0, atol=0)
        assert torch.equal(ours.visual_ids, theirs.visual_ids) and torch.equal(ours.prologue_ids, theirs.prologue_ids)
        torch.testing.assert_close(small_tok.decode(ours.visual_ids).pixel_values,
                                   full_tok.decode(ours.visual_ids).pixel_values, rtol=0, atol=0)
        sequence = full_ar.config.vocabulary.build_sequence([3, 7], ours.visual_ids, ours.prologue_ids)
        torch.testing.assert_close(small_ar(sequence).logits, full_ar(sequence).logits, rtol=0, atol=0)


_FRESH_PROCESS_CHECK = r"""
import sys, torch
sys.modules["prologue_hf.conversion"] = None  # any import of the converter now fails
from safetensors.torch import load_file
from prologue_hf.pipelines import ProloguePipeline, SamplingParams
for folder, fixture, preset in zip(sys.argv[1::3], sys.argv[2::3], sys.argv[3::3]):
    pipe = ProloguePipeline.from_pretrained(folder)
    ref = load_file(fixture + "/sampling_outputs.safetensors")
    out = pipe([3, 7], sampling=SamplingParams.from_preset(preset, top_k=1), output_type="pt", return_ids=True)
    assert torch.equal(out.ids, ref["nocfg__ids"]), folder
    print(type(pipe.tokenizer).__name__)
"""


def test_converted_pipeline_folders_load_in_a_fresh_process_without_the_converter(converted):
    args = []
    for name, (_, _, preset) in sorted(FAMILIES.items()):
        args += [str(converted(name)[0]), str(FIXTURES / name), f"{preset}-nocfg"]
    result = subprocess.run([sys.executable, "-c", _FRESH_PROCESS_CHECK, *args], capture_output=True, text=True,
                            timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == [FAMILIES[name][1].__name__ for name in sorted(FAMILIES)]
