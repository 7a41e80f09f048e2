"""Every name the docs list is importable from `prologue_hf`, and `import prologue_hf` registers the Auto classes."""

import inspect
import re
from pathlib import Path

import prologue_hf
from prologue_hf import PrologueARConfig, PrologueTokenizerConfig
from prologue_hf.pipelines import ProloguePipeline

DOCS = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def test_every_exported_name_resolves():
    for name in prologue_hf.__all__:
        assert getattr(prologue_hf, name) is not None, name


def test_names_in_api_doc_first_sections_are_exported():
    text = DOCS.read_text()
    body = text.split("## Data, demo and replication")[0]
    names = {n for n in re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)`", body) if n[0].isupper() or "_" in n}
    ignore = {"trust_remote_code", "prologue_tokenizer", "prologue_ar", "prologue_post", "prologue_discriminator",
              "from_preset", "for_tokenizer", "embed_sequence", "build_sequence", "class_token_ids", "allowed_tokens",
              "logit_mask", "segment_ids", "decode_codes", "codebook_usage", "from_official", "import prologue_hf",
              "AutoConfig", "AutoModel", "AutoModelForCausalLM", "ValueError", "ModelOutput", "prologue_hf"}
    missing = [n for n in sorted(names - ignore) if not hasattr(prologue_hf, n)]
    assert not missing, missing


def test_documented_defaults_match_signatures():
    # the pipeline docs state these defaults; keep them true (STYLE.md: DiT documented 250 steps, defaulted to 50)
    params = inspect.signature(ProloguePipeline.__call__).parameters
    assert params["num_images_per_label"].default == 1
    assert params["output_type"].default == "pil"
    assert PrologueTokenizerConfig().prologue_temperature == 0.1
    assert PrologueTokenizerConfig().num_prologue_tokens == 16
    assert PrologueTokenizerConfig().prologue_codebook_size == 1024
    assert PrologueARConfig().hidden_act == "gelu_pytorch_tanh"
