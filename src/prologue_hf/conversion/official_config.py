"""Read the authors' resolved OmegaConf config and map it onto our configs, refusing what we cannot honour.

The official scripts merge YAML layers with OmegaConf and an ``eval`` resolver (``utils.load_config``); we read
the *resolved* result with ``yaml.safe_load`` only, parse ``mlp_ratio`` strings such as ``"8/3"`` as fractions and
check every setting that changes the network's function against what our models implement (SPEC.md sections 1-3).
Errors name the config file and the dotted key.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from fractions import Fraction
from pathlib import Path
from typing import Any

import yaml
from transformers.utils import logging

from ..models import PrologueARConfig, PrologueTokenizerConfig
from ..vocabulary import PrologueVocabulary

logger = logging.get_logger(__name__)

_MISSING = object()


# ----------------------------------------------------------------------------------------------------------- config
class OfficialConfig:
    """A resolved official OmegaConf config (plain nested dicts), with errors that name the file and the key.

    Args:
        data: the parsed YAML mapping.
        path: where it came from (only used in messages).
    """

    def __init__(self, data: Mapping[str, Any], path: str | Path = "<config>"):
        if not isinstance(data, Mapping):
            raise ValueError(f"official config {path} must be a YAML mapping, got {type(data).__name__}")
        self.data = data
        self.path = str(path)
        self._check_resolved(data, "")

    @classmethod
    def from_yaml(cls, path: str | Path) -> OfficialConfig:
        """Read a resolved config YAML with ``yaml.safe_load`` (no OmegaConf, no ``eval``)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"official config file {path} does not exist")
        with open(path, encoding="utf-8") as handle:
            return cls(yaml.safe_load(handle), path)

    def _check_resolved(self, node: Any, prefix: str) -> None:
        if isinstance(node, Mapping):
            for key, value in node.items():
                self._check_resolved(value, f"{prefix}{key}.")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                self._check_resolved(value, f"{prefix}{i}.")
        elif isinstance(node, str) and "${" in node:
            raise ValueError(
                f"{self.path}: key {prefix[:-1]!r} = {node!r} is an unresolved OmegaConf interpolation. Pass the "
                "resolved config: in the official environment run OmegaConf.save(cfg, 'config.yaml', resolve=True) "
                "on the merged config (see docs/converting.md)"
            )

    def get(self, key: str, default: Any = _MISSING) -> Any:
        """Value at dotted ``key`` (``"Encoder.dim"``); ``default`` when absent, else a ``ValueError``."""
        node: Any = self.data
        for part in key.split("."):
            if not isinstance(node, Mapping) or part not in node:
                if default is _MISSING:
                    raise ValueError(f"{self.path}: required config key {key!r} is missing")
                return default
            node = node[part]
        return node

    def integer(self, key: str, default: Any = _MISSING) -> int:
        value = self.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise ValueError(f"{self.path}: config key {key!r} must be an integer, got {value!r}")
        return int(value)

    def scalar(self, key: str, default: Any = _MISSING) -> float:
        value = self.get(key, default)
        if isinstance(value, list):
            # FluxRopeEMB accepts one theta per axis; equal values are the scalar case.
            if not value or any(v != value[0] for v in value):
                raise NotImplementedError(
                    f"{self.path}: config key {key!r} = {value!r} gives each RoPE axis its own base; only one base "
                    "per rotary embedding is supported"
                )
            value = value[0]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{self.path}: config key {key!r} must be a number, got {value!r}")
        return float(value)

    def ratio(self, key: str) -> Fraction:
        """An ``mlp_ratio`` such as ``"8/3"``, ``"11/4"`` or ``2.75``, parsed as a fraction (never ``eval``)."""
        value = self.get(key)
        try:
            if isinstance(value, bool):
                raise ValueError
            return Fraction(value) if isinstance(value, int) else Fraction(str(value).replace(" ", ""))
        except (ValueError, ZeroDivisionError):
            raise ValueError(
                f"{self.path}: config key {key!r} = {value!r} is not a number or a fraction such as '8/3'"
            ) from None

    def require(self, key: str, allowed: Iterable[Any], default: Any = _MISSING, why: str = "") -> Any:
        """The value at ``key``; ``NotImplementedError`` naming the key when it is not one of ``allowed``."""
        allowed = list(allowed)
        value = self.get(key, default)
        if value not in allowed:
            expected = allowed[0] if len(allowed) == 1 else allowed
            raise NotImplementedError(
                f"{self.path}: config key {key!r} = {value!r} is not supported (expected {expected!r})"
                + (f": {why}" if why else "")
            )
        return value

    def expect_equal(self, key: str, expected: Any, what: str) -> None:
        value = self.get(key)
        if value != expected:
            raise ValueError(f"{self.path}: config key {key!r} = {value!r} does not match {what} = {expected!r}")


def hidden_dim(config: OfficialConfig, section: str) -> int:
    # Official FFN width: round(dim * mlp_ratio) (models.py TransformerLayer).
    return round(config.integer(f"{section}.dim") * config.ratio(f"{section}.mlp_ratio"))


def _check_common_transformer(config: OfficialConfig, section: str) -> None:
    """Settings every official Transformer we convert must have (released models all do)."""
    config.require(f"{section}.norm_layer", ["RMSNorm"], why="only the AdaRMSNorm variant maps onto RMSNorm")
    config.require(f"{section}.ffn_type", ["geglu"], why="only the GEGLU FFN is implemented")
    config.require(f"{section}.rope", [True], why="positions are only encoded by RoPE here")
    config.require(f"{section}.abs_pos", [False], default=False, why="learned absolute positions are not supported")
    config.require(f"{section}.attn_norm", [True], why="our blocks always apply the q/k RMSNorm")
    config.require(f"{section}.out_act", [False], default=False, why="no activation after the final norm is modelled")
    config.require(f"{section}.use_label", [True], default=True, why="the label-conditioned norms/gates are folded")
    config.require(f"{section}.bos_zero_rope", [False], default=False)
    if config.integer(f"{section}.dim") % config.integer(f"{section}.heads"):
        raise ValueError(f"{config.path}: {section}.dim must be divisible by {section}.heads")


def _check_prologue_variant(config: OfficialConfig) -> None:
    """Only the paper's main model (``configs/tokenizer/prologue.yaml``) converts."""
    config.require(
        "Prologue", [True], default=False,
        why="the 1D / 2D baselines (configs/tokenizer/1d.yaml, 2d.yaml) are not converted",
    )
    config.require(
        "share_semantic_codebook", [False], default=False,
        why="a shared prologue/visual codebook is the 1D/2D baseline layout, not converted",
    )
    config.require(
        "share_semantic_encoder", [True], default=True,
        why="this is Prologue-Post (separate semantic_enc.* encoder), which is not converted",
    )
    if config.integer("z_len") < 1:
        raise NotImplementedError(f"{config.path}: z_len = {config.get('z_len')!r}; Prologue needs z_len > 0")


def _grid(config: OfficialConfig) -> tuple[int, int]:
    image_size, patch_size = config.integer("image_size"), config.integer("patch_size")
    if image_size % patch_size:
        raise ValueError(f"{config.path}: image_size {image_size} is not a multiple of patch_size {patch_size}")
    grid = image_size // patch_size
    config.expect_equal("x_len", grid * grid, "(image_size / patch_size)**2")
    config.expect_equal("patch_dim", patch_size * patch_size * config.integer("num_channels"), "patch_size**2 * num_channels")
    return grid, grid * grid


def official_tokenizer_config(config: OfficialConfig) -> PrologueTokenizerConfig:
    """Map an official Prologue tokenizer config (Encoder / Decoder / Quantizer / SemanticQuantizer) onto ours.

    Raises ``NotImplementedError`` for variants and settings that have no exact equivalent here, and ``ValueError`` for
    internally inconsistent values.
    """
    _check_prologue_variant(config)
    config.require("ae_no_label", [True], default=False, why=(
        "the encoder/decoder must see the constant null label (as every released model does) so that the "
        "label-conditioned norms and gates fold into plain weights"
    ))
    _, x_len = _grid(config)
    z_len = config.integer("z_len")
    for section in ("Encoder", "Decoder"):
        _check_common_transformer(config, section)
        config.require(f"{section}.causal", [False])
        config.require(f"{section}.input_layer", [True])
        config.require(f"{section}.input_bias", [True], default=True)
    enc, dec = "Encoder", "Decoder"
    config.require(f"{enc}.context_type", ["concat"], why="the shared Prologue encoder appends its queries")
    config.require(f"{enc}.rope_input_type", ["l"])
    config.require(f"{enc}.rope_ctx_type", ["hw"])
    config.require(f"{enc}.out_norm", [False], why="the Prologue encoder has no final norm")
    config.require(f"{enc}.out_layer", [False])
    config.expect_equal(f"{enc}.max_seq_len", z_len, "z_len (prologue queries)")
    config.expect_equal(f"{enc}.ctx_max_seq_len", x_len, "x_len")
    config.expect_equal(f"{enc}.input_dim", config.integer("patch_dim"), "patch_dim")
    config.require(f"{dec}.context_type", ["none"])
    config.require(f"{dec}.rope_input_type", ["hw"])
    config.require(f"{dec}.out_norm", [True])
    config.require(f"{dec}.out_layer", [True])
    config.expect_equal(f"{dec}.max_seq_len", x_len, "x_len")
    config.expect_equal(f"{dec}.output_dim", config.integer("patch_dim"), "patch_dim")
    if config.get(f"{enc}.rope_axes_dim") != config.get(f"{dec}.rope_axes_dim"):
        raise NotImplementedError(
            f"{config.path}: Encoder.rope_axes_dim {config.get(f'{enc}.rope_axes_dim')} differs from "
            f"Decoder.rope_axes_dim {config.get(f'{dec}.rope_axes_dim')}; one rope_axes_dim is supported"
        )
    # Our decoder grid uses the encoder's patch base (patch_rope_theta) for its (row, col) positions.
    if config.scalar(f"{dec}.rope_theta") != config.scalar(f"{enc}.rope_ctx_theta"):
        raise NotImplementedError(
            f"{config.path}: Decoder.rope_theta {config.get(f'{dec}.rope_theta')} differs from "
            f"Encoder.rope_ctx_theta {config.get(f'{enc}.rope_ctx_theta')}; one patch RoPE base is supported"
        )
    z_dims = {}
    for section, ste, length in (("Quantizer", "VQ", x_len), ("SemanticQuantizer", "ProbQ", z_len)):
        config.require(f"{section}.ste", [ste])
        config.require(f"{section}.z_norm_type", ["l2"], why="only L2-normalised features are supported")
        config.require(f"{section}.codebook_proj", ["l2"], why="only an L2-normalised codebook is supported")
        if config.get(f"{section}.codebook_init", "trunc_normal") == "LFQ":
            raise NotImplementedError(f"{config.path}: {section}.codebook_init = 'LFQ' (binary codebook) is not supported")
        config.expect_equal(f"{section}.length", length, "the token count it quantizes")
        config.expect_equal(f"{section}.dim", config.integer(f"{enc}.dim"), "Encoder.dim")
        z_dims[section] = config.integer(f"{section}.z_dim")
    if z_dims["Quantizer"] != z_dims["SemanticQuantizer"]:
        raise NotImplementedError(f"{config.path}: Quantizer.z_dim and SemanticQuantizer.z_dim differ ({z_dims})")
    config.expect_equal(f"{dec}.input_dim", z_dims["Quantizer"], "Quantizer.z_dim")
    dropout = float(config.get(f"{enc}.drop", 0.0))
    if float(config.get(f"{dec}.drop", 0.0)) != dropout or config.get(f"{dec}.attn_drop", 0.0) != config.get(
        f"{enc}.attn_drop", 0.0
    ):
        logger.warning("Encoder and Decoder dropouts differ; the converted tokenizer uses the Encoder's (training only)")
    return PrologueTokenizerConfig(
        image_size=config.integer("image_size"),
        patch_size=config.integer("patch_size"),
        num_channels=config.integer("num_channels"),
        tokenizer_type="prologue",
        num_prologue_tokens=z_len,
        visual_codebook_size=config.integer("Quantizer.codebook_size"),
        prologue_codebook_size=config.integer("SemanticQuantizer.codebook_size"),
        codebook_dim=z_dims["Quantizer"],
        prologue_temperature=config.scalar("SemanticQuantizer.temperature"),
        commitment_beta=config.scalar("Quantizer.vq_beta", 0.25),
        hidden_size=config.integer(f"{enc}.dim"),
        num_hidden_layers=config.integer(f"{enc}.layer_num"),
        num_attention_heads=config.integer(f"{enc}.heads"),
        intermediate_size=hidden_dim(config, enc),
        decoder_hidden_size=config.integer(f"{dec}.dim"),
        decoder_num_hidden_layers=config.integer(f"{dec}.layer_num"),
        decoder_num_attention_heads=config.integer(f"{dec}.heads"),
        decoder_intermediate_size=hidden_dim(config, dec),
        rope_axes_dim=[int(a) for a in config.get(f"{enc}.rope_axes_dim")],
        patch_rope_theta=config.scalar(f"{enc}.rope_ctx_theta"),  # patches are the encoder's "ctx" tokens
        query_rope_theta=config.scalar(f"{enc}.rope_theta"),
        dropout=dropout,
        attention_dropout=float(config.get(f"{enc}.attn_drop", 0.0)),
    )


def official_vocabulary(config: OfficialConfig) -> tuple[PrologueVocabulary, int]:
    """Our vocabulary for an official AR config, and the official AR vocabulary size ``V + P + 1``."""
    _check_prologue_variant(config)
    _, x_len = _grid(config)
    z_len = config.integer("z_len")
    config.require(
        "use_eos", [True], default=False,
        why="with z_len > 0 our vocabulary always has an EOS between prologue and visual tokens",
    )
    num_classes = config.integer("ARModel.cond_input_dim")
    if num_classes < 2:
        raise ValueError(f"{config.path}: ARModel.cond_input_dim = {num_classes}; expected real classes + 1 null class")
    vocabulary = PrologueVocabulary(
        config.integer("Quantizer.codebook_size"),
        config.integer("SemanticQuantizer.codebook_size"),
        z_len,
        x_len,
        num_classes - 1,  # the official last class index is the null class
    )
    return vocabulary, vocabulary.eos_token_id + 1


def official_ar_config(config: OfficialConfig) -> PrologueARConfig:
    """Map an official ``ARModel`` config (``conditional_injection: llamagen``) onto a :class:`PrologueARConfig`."""
    vocabulary, _ = official_vocabulary(config)
    ar = "ARModel"
    _check_common_transformer(config, ar)
    config.require(f"{ar}.conditional_injection", ["llamagen"], default="llamagen", why="class BOS rows are mapped")
    config.require(f"{ar}.context_type", ["none"])
    config.require(f"{ar}.rope_input_type", ["l"], why="hybrid (l, h, w) AR positions are not supported")
    config.require(f"{ar}.causal", [True])
    config.require(f"{ar}.input_layer", [False])
    config.require(f"{ar}.out_norm", [True])
    for key in ("ffn_bias", "attn_out_bias", "out_bias"):
        config.require(f"{ar}.{key}", [False], why="the Llama layers carry no biases")
    if config.scalar(f"{ar}.temperature", 1.0) != 1.0:
        raise NotImplementedError(
            f"{config.path}: ARModel.temperature = {config.get(f'{ar}.temperature')!r}; the official forward divides "
            "the logits by it but its sampler does not, so no single converted head reproduces both (expected 1.0)"
        )
    # The YAML holds max_seq_len before ARModel.__init__ adds the EOS slot.
    config.expect_equal(f"{ar}.max_seq_len", vocabulary.num_prologue_tokens + vocabulary.num_visual_tokens, "z_len + x_len")
    tied = bool(config.get(f"{ar}.tied_embedding", False))
    if not tied:
        config.require(f"{ar}.out_layer", [True])
    dim, heads = config.integer(f"{ar}.dim"), config.integer(f"{ar}.heads")
    return PrologueARConfig(
        visual_vocab_size=vocabulary.visual_vocab_size,
        prologue_vocab_size=vocabulary.prologue_vocab_size,
        num_prologue_tokens=vocabulary.num_prologue_tokens,
        num_visual_tokens=vocabulary.num_visual_tokens,
        num_classes=vocabulary.num_classes,
        hidden_size=dim,
        intermediate_size=hidden_dim(config, ar),
        num_hidden_layers=config.integer(f"{ar}.layer_num"),
        num_attention_heads=heads,
        num_key_value_heads=heads,
        hidden_act="gelu_pytorch_tanh",  # GEGLU: the activated half is the "value" half of fc1
        use_qk_norm=True,
        rope_axes_dim=[int(a) for a in config.get(f"{ar}.rope_axes_dim")],
        rope_parameters={"rope_type": "default", "rope_theta": config.scalar(f"{ar}.rope_theta")},
        # Official norms are F.normalize (a 1e-12 floor on ||x||), i.e. RMSNorm with a negligible epsilon.
        rms_norm_eps=1e-12,
        tie_word_embeddings=tied,
        attention_bias=False,
        mlp_bias=False,
        embedding_dropout=float(config.get(f"{ar}.emb_dropout", 0.0)),
        hidden_dropout=float(config.get(f"{ar}.drop", 0.0)),
        attention_dropout=float(config.get(f"{ar}.attn_drop", 0.0)),
    )


__all__ = ["OfficialConfig", "hidden_dim", "official_ar_config", "official_tokenizer_config", "official_vocabulary"]
