"""Read the authors' resolved OmegaConf config and map it onto our configs, refusing what we cannot honour.

The official scripts merge YAML layers with OmegaConf and an ``eval`` resolver (``utils.load_config``); we read
the *resolved* result with ``yaml.safe_load`` only, parse ``mlp_ratio`` strings such as ``"8/3"`` as fractions and
check every setting that changes the network's function against what our models implement (the official layout:
``tests/fixtures/official-prologue-tiny/SPEC.md``, sections 1-3).
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
        """Read a resolved config YAML with ``yaml.safe_load`` (no OmegaConf, no ``eval``).

        A missing file, bytes that are not UTF-8 text and YAML that does not parse (e.g. a file cut off inside a
        quoted string) raise errors that name the file.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"official config file {path} does not exist")
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as error:
            raise ValueError(
                f"official config file {path} is not UTF-8 text (byte {error.start} is {error.object[error.start]:#04x}); "
                "pass the resolved OmegaConf YAML, not a binary file"
            ) from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise ValueError(f"official config file {path} is not valid YAML (truncated or corrupt?): {error}") from None
        if data is None:
            raise ValueError(f"official config file {path} is empty")
        return cls(data, path)

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

    def integer(self, key: str, default: Any = _MISSING, minimum: int | None = None) -> int:
        """Integer at ``key``; ``minimum`` (e.g. 1 for sizes) is checked with an error naming the key."""
        value = self.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise ValueError(f"{self.path}: config key {key!r} must be an integer, got {value!r}")
        if minimum is not None and value < minimum:
            raise ValueError(f"{self.path}: config key {key!r} = {value!r} must be >= {minimum}")
        return int(value)

    def size(self, key: str, default: Any = _MISSING) -> int:
        """A size (width, heads, layers, codebook entries, tokens): an integer >= 1, else an error naming the key."""
        return self.integer(key, default, minimum=1)

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
            ratio = Fraction(value) if isinstance(value, int) else Fraction(str(value).replace(" ", ""))
        except (ValueError, ZeroDivisionError):
            raise ValueError(
                f"{self.path}: config key {key!r} = {value!r} is not a number or a fraction such as '8/3'"
            ) from None
        if ratio <= 0:
            raise ValueError(f"{self.path}: config key {key!r} = {value!r} must be > 0")
        return ratio

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
    return round(config.size(f"{section}.dim") * config.ratio(f"{section}.mlp_ratio"))


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
    for key in ("dim", "heads", "layer_num", "cond_dim", "cond_input_dim"):
        config.size(f"{section}.{key}")
    if config.size(f"{section}.dim") % config.size(f"{section}.heads"):
        raise ValueError(f"{config.path}: {section}.dim must be divisible by {section}.heads")


# ------------------------------------------------------------------------------------------------------ families
#: The official model families this converter reads, with how each is recognised and which released folders it covers.
OFFICIAL_FAMILIES: dict[str, str] = {
    "prologue": "Prologue tokenizer + AR (Prologue: true, shared encoder; prologue-b/l-tokenizer, ar-prologue-*)",
    "onestage": "Prologue-OneStage (a Prologue config with continuous_training: true; the joint AR is model_5 / "
    "model_6 of the tokenizer folder; prologue-onestage-joint)",
    "post": "Prologue-Post (Prologue: true, share_semantic_encoder: false: a frozen 2D tokenizer + a semantic_enc.* "
    "prologue encoder; prologue-post-tokenizer, ar-prologue-post-b)",
    "2d": "2D tokenizer baseline (Prologue: false, Encoder.context_type: none; 2d-tokenizer, ar-2d-base)",
    "1d": "1D tokenizer baseline (Prologue: false, Encoder.context_type: concat; 1d-tokenizer, ar-1d-base)",
}


def _unsupported_family(config: OfficialConfig, detail: str) -> NotImplementedError:
    listing = "; ".join(f"{name}: {text}" for name, text in OFFICIAL_FAMILIES.items())
    return NotImplementedError(f"{config.path}: {detail}. Supported official families: {listing}")


def official_family(config: OfficialConfig) -> str:
    """Which official family a resolved config describes: one of :data:`OFFICIAL_FAMILIES`.

    Read from the flags the official code branches on (``Prologue``, ``share_semantic_codebook``,
    ``share_semantic_encoder``, ``Encoder.context_type``, ``continuous_training``). ``Prologue`` must be present (a
    truncated file is reported as such, not as an unsupported variant); anything else is refused with the list of
    supported families.
    """
    prologue = config.get("Prologue")
    if not isinstance(prologue, bool):
        raise ValueError(f"{config.path}: config key 'Prologue' must be true or false, got {prologue!r}")
    if prologue:
        if config.get("share_semantic_codebook", False) is not False:
            raise _unsupported_family(config, "'share_semantic_codebook' = True with 'Prologue' = True (prologue "
                                      "and visual tokens from one codebook) is no released family")
        if config.get("share_semantic_encoder", True) is False:
            return "post"
        return "onestage" if config.get("continuous_training", False) is True else "prologue"
    context = config.get("Encoder.context_type")
    if context == "none":
        return "2d"
    if context == "concat":
        return "1d"
    raise _unsupported_family(config, f"'Prologue' = False with 'Encoder.context_type' = {context!r}")


def _grid(config: OfficialConfig) -> tuple[int, int]:
    image_size, patch_size = config.size("image_size"), config.size("patch_size")
    if image_size % patch_size:
        raise ValueError(f"{config.path}: image_size {image_size} is not a multiple of patch_size {patch_size}")
    grid = image_size // patch_size
    config.expect_equal("x_len", grid * grid, "(image_size / patch_size)**2")
    config.expect_equal("patch_dim", patch_size * patch_size * config.size("num_channels"), "patch_size**2 * num_channels")
    return grid, grid * grid


def _token_counts(config: OfficialConfig, family: str) -> tuple[int, int]:
    """``(K prologue tokens, N visual tokens)`` of a family: the AR's vocabulary layout."""
    _, x_len = _grid(config)
    z_len = config.size("z_len")
    if family == "2d":
        config.expect_equal("z_len", x_len, "x_len (the 2D baseline has one token per patch)")
        return 0, x_len
    if family == "1d":
        return 0, z_len  # the z_len latent queries are the whole token sequence
    return z_len, x_len


def _check_transformer_io(config: OfficialConfig, section: str, context: str, input_type: str, ctx_type: str | None,
                          max_seq_len: int, ctx_max_seq_len: int | None, out: bool) -> None:
    """One tokenizer Transformer's token layout: context mode, RoPE id types, lengths, final norm / output layer."""
    _check_common_transformer(config, section)
    config.require(f"{section}.causal", [False])
    config.require(f"{section}.input_layer", [True])
    config.require(f"{section}.input_bias", [True], default=True)
    config.require(f"{section}.context_type", [context])
    config.require(f"{section}.rope_input_type", [input_type])
    if ctx_type is not None:
        config.require(f"{section}.rope_ctx_type", [ctx_type])
        config.expect_equal(f"{section}.ctx_max_seq_len", ctx_max_seq_len, "the number of context tokens")
    config.expect_equal(f"{section}.max_seq_len", max_seq_len, "the number of its own tokens")
    config.require(f"{section}.out_norm", [out], why="the encoders have no final norm, the decoder has one")
    config.require(f"{section}.out_layer", [out])


def _same_theta(config: OfficialConfig, key: str, other: str, what: str) -> float:
    value = config.scalar(key)
    if value != config.scalar(other):
        raise NotImplementedError(
            f"{config.path}: {key} = {config.get(key)!r} differs from {other} = {config.get(other)!r}; one {what} "
            "RoPE base is supported"
        )
    return value


def _check_quantizer(config: OfficialConfig, section: str, ste: str, tokens: int, dim_key: str) -> int:
    """A cosine-similarity quantizer section; returns its ``z_dim``."""
    config.require(f"{section}.ste", [ste])
    config.require(f"{section}.z_norm_type", ["l2"], why="only L2-normalised features are supported")
    config.require(f"{section}.codebook_proj", ["l2"], why="only an L2-normalised codebook is supported")
    if config.get(f"{section}.codebook_init", "trunc_normal") == "LFQ":
        raise NotImplementedError(f"{config.path}: {section}.codebook_init = 'LFQ' (binary codebook) is not supported")
    # The official quantizer slices pos_select_mask[:L]: its length may exceed the token count (1D: x_len rows).
    if config.size(f"{section}.length") < tokens:
        raise ValueError(f"{config.path}: {section}.length = {config.get(f'{section}.length')} is below the {tokens} "
                         "tokens it quantizes")
    config.expect_equal(f"{section}.dim", config.size(dim_key), dim_key)
    config.size(f"{section}.codebook_size")
    return config.size(f"{section}.z_dim")


def _check_token_layout(config: OfficialConfig, family: str, x_len: int, z_len: int) -> tuple[float, float]:
    """Check the ``Encoder`` / ``Decoder`` token layout of ``family`` (``x_len`` patches, ``z_len`` queries) and
    return its RoPE bases ``(patch_rope_theta, query_rope_theta)``."""
    enc, dec = "Encoder", "Decoder"
    if family in ("2d", "post"):  # one token per patch, no queries anywhere
        _check_transformer_io(config, enc, "none", "hw", None, x_len, None, out=False)
        _check_transformer_io(config, dec, "none", "hw", None, x_len, None, out=True)
        patch_theta = _same_theta(config, f"{dec}.rope_theta", f"{enc}.rope_theta", "patch")
        query_theta = 10000.0  # no query tokens: the value is unused
    elif family == "1d":  # [patches; z_len latent queries] -> [z_len codes; x_len mask queries]
        _check_transformer_io(config, enc, "concat", "l", "hw", z_len, x_len, out=False)
        _check_transformer_io(config, dec, "concat", "hw", "l", x_len, z_len, out=True)
        patch_theta = _same_theta(config, f"{dec}.rope_theta", f"{enc}.rope_ctx_theta", "patch")
        query_theta = _same_theta(config, f"{dec}.rope_ctx_theta", f"{enc}.rope_theta", "query")
    else:  # [patches; K prologue queries] -> decoder over the visual codes
        _check_transformer_io(config, enc, "concat", "l", "hw", z_len, x_len, out=False)
        _check_transformer_io(config, dec, "none", "hw", None, x_len, None, out=True)
        patch_theta = _same_theta(config, f"{dec}.rope_theta", f"{enc}.rope_ctx_theta", "patch")
        query_theta = config.scalar(f"{enc}.rope_theta")
    return patch_theta, query_theta


def official_tokenizer_config(config: OfficialConfig, family: str | None = None) -> PrologueTokenizerConfig:
    """Map the official tokenizer (``Encoder`` / ``Decoder`` / ``Quantizer`` [/ ``SemanticQuantizer``]) onto ours.

    ``family`` (default: :func:`official_family`) selects the layout: ``"prologue"`` / ``"onestage"`` (visual grid +
    prologue queries), ``"2d"`` (the grid alone), ``"1d"`` (latent queries, decoder with mask queries) and
    ``"post"`` (its frozen 2D visual tokenizer; the prologue encoder is :func:`official_post_config`).

    Raises ``NotImplementedError`` for variants and settings that have no exact equivalent here, and ``ValueError`` for
    internally inconsistent values; both name the file and the key.
    """
    family = official_family(config) if family is None else family
    config.require("ae_no_label", [True], default=False, why=(
        "the encoder/decoder must see the constant null label (as every released model does) so that the "
        "label-conditioned norms and gates fold into plain weights"
    ))
    _, x_len = _grid(config)
    z_len = config.size("z_len")
    enc, dec = "Encoder", "Decoder"
    patch_theta, query_theta = _check_token_layout(config, family, x_len, z_len)
    config.expect_equal(f"{enc}.input_dim", config.size("patch_dim"), "patch_dim")
    config.expect_equal(f"{dec}.output_dim", config.size("patch_dim"), "patch_dim")
    if config.get(f"{enc}.rope_axes_dim") != config.get(f"{dec}.rope_axes_dim"):
        raise NotImplementedError(
            f"{config.path}: Encoder.rope_axes_dim {config.get(f'{enc}.rope_axes_dim')} differs from "
            f"Decoder.rope_axes_dim {config.get(f'{dec}.rope_axes_dim')}; one rope_axes_dim is supported"
        )
    num_visual = z_len if family == "1d" else x_len
    z_dim = _check_quantizer(config, "Quantizer", "VQ", num_visual, f"{enc}.dim")
    prologue: dict[str, Any] = {"num_prologue_tokens": 0}
    if family in ("prologue", "onestage"):
        semantic_z_dim = _check_quantizer(config, "SemanticQuantizer", "ProbQ", z_len, f"{enc}.dim")
        if semantic_z_dim != z_dim:
            raise NotImplementedError(
                f"{config.path}: Quantizer.z_dim ({z_dim}) and SemanticQuantizer.z_dim ({semantic_z_dim}) differ; "
                "one codebook_dim is supported"
            )
        prologue = dict(
            num_prologue_tokens=z_len,
            prologue_codebook_size=config.size("SemanticQuantizer.codebook_size"),
            prologue_temperature=config.scalar("SemanticQuantizer.temperature"),
        )
    config.expect_equal(f"{dec}.input_dim", z_dim, "Quantizer.z_dim")
    dropout = float(config.get(f"{enc}.drop", 0.0))
    if float(config.get(f"{dec}.drop", 0.0)) != dropout or config.get(f"{dec}.attn_drop", 0.0) != config.get(
        f"{enc}.attn_drop", 0.0
    ):
        logger.warning("Encoder and Decoder dropouts differ; the converted tokenizer uses the Encoder's (training only)")
    return PrologueTokenizerConfig(
        image_size=config.size("image_size"),
        patch_size=config.size("patch_size"),
        num_channels=config.size("num_channels"),
        tokenizer_type={"1d": "1d", "2d": "2d", "post": "2d"}.get(family, "prologue"),
        visual_codebook_size=config.size("Quantizer.codebook_size"),
        codebook_dim=z_dim,
        commitment_beta=config.scalar("Quantizer.vq_beta", 0.25),
        hidden_size=config.size(f"{enc}.dim"),
        num_hidden_layers=config.size(f"{enc}.layer_num"),
        num_attention_heads=config.size(f"{enc}.heads"),
        intermediate_size=hidden_dim(config, enc),
        decoder_hidden_size=config.size(f"{dec}.dim"),
        decoder_num_hidden_layers=config.size(f"{dec}.layer_num"),
        decoder_num_attention_heads=config.size(f"{dec}.heads"),
        decoder_intermediate_size=hidden_dim(config, dec),
        rope_axes_dim=[int(a) for a in config.get(f"{enc}.rope_axes_dim")],
        patch_rope_theta=patch_theta,
        query_rope_theta=query_theta,
        dropout=dropout,
        attention_dropout=float(config.get(f"{enc}.attn_drop", 0.0)),
        **prologue,
        **({"num_latent_tokens": z_len} if family == "1d" else {}),
    )


def official_post_config(config: OfficialConfig) -> dict[str, Any]:
    """Keyword arguments of :meth:`ProloguePostModel.from_visual_tokenizer` for an official Prologue-Post config.

    The official ``SemanticEncoder`` reads the frozen visual encoder's raw output (``semantic_input_type:
    encoder_output``) through ``semantic_enc.input_layer`` and appends ``z_len`` queries (concat, queries at ``(0, 0,
    l)``, grid at ``(row, col, 0)``); the last ``z_len`` rows go to ``SemanticQuantizer`` (Prob-STE).
    """
    if official_family(config) != "post":
        raise ValueError(f"{config.path} does not describe Prologue-Post (share_semantic_encoder: false)")
    _, x_len = _grid(config)
    z_len = config.size("z_len")
    section = "SemanticEncoder"
    config.require("semantic_input_type", ["encoder_output"], why="the prologue encoder reads the frozen encoder output")
    _check_transformer_io(config, section, "concat", "l", "hw", z_len, x_len, out=False)
    config.expect_equal(f"{section}.input_dim", config.size("Encoder.dim"), "Encoder.dim (the frozen encoder output)")
    config.expect_equal(f"{section}.dim", config.size("semantic_dim"), "semantic_dim")
    _check_quantizer(config, "SemanticQuantizer", "ProbQ", z_len, f"{section}.dim")
    return dict(
        encoder_input="features",
        num_prologue_tokens=z_len,
        prologue_codebook_size=config.size("SemanticQuantizer.codebook_size"),
        codebook_dim=config.size("SemanticQuantizer.z_dim"),
        prologue_temperature=config.scalar("SemanticQuantizer.temperature"),
        hidden_size=config.size(f"{section}.dim"),
        num_hidden_layers=config.size(f"{section}.layer_num"),
        num_attention_heads=config.size(f"{section}.heads"),
        intermediate_size=hidden_dim(config, section),
        rope_axes_dim=[int(a) for a in config.get(f"{section}.rope_axes_dim")],
        patch_rope_theta=config.scalar(f"{section}.rope_ctx_theta"),
        query_rope_theta=config.scalar(f"{section}.rope_theta"),
        dropout=float(config.get(f"{section}.drop", 0.0)),
        attention_dropout=float(config.get(f"{section}.attn_drop", 0.0)),
    )


def official_vocabulary(config: OfficialConfig) -> tuple[PrologueVocabulary, int]:
    """Our vocabulary for an official AR config, and the official AR vocabulary size (``V + P + 1`` with a prologue,
    ``V`` for the 1D / 2D baselines)."""
    family = official_family(config)
    num_prologue, num_visual = _token_counts(config, family)
    # With a prologue our vocabulary always has an EOS between prologue and visual tokens; the baselines have none.
    config.require("use_eos", [bool(num_prologue)], default=False, why=(
        "Prologue ARs put an EOS between prologue and visual tokens, the 1D / 2D baseline ARs do not"
    ))
    num_classes = config.size("ARModel.cond_input_dim")
    if num_classes < 2:
        raise ValueError(f"{config.path}: ARModel.cond_input_dim = {num_classes}; expected real classes + 1 null class")
    vocabulary = PrologueVocabulary(
        config.size("Quantizer.codebook_size"),
        config.size("SemanticQuantizer.codebook_size") if num_prologue else 0,
        num_prologue,
        num_visual,
        num_classes - 1,  # the official last class index is the null class
    )
    return vocabulary, vocabulary.class_offset


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
    config.expect_equal(
        f"{ar}.max_seq_len", vocabulary.num_prologue_tokens + vocabulary.num_visual_tokens,
        "the prologue + visual token count (z_len + x_len; z_len for the 1D / 2D baselines)",
    )
    tied = bool(config.get(f"{ar}.tied_embedding", False))
    if not tied:
        config.require(f"{ar}.out_layer", [True])
    dim, heads = config.size(f"{ar}.dim"), config.size(f"{ar}.heads")
    return PrologueARConfig(
        **vocabulary.ar_config_fields(),
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


__all__ = [
    "OFFICIAL_FAMILIES",
    "OfficialConfig",
    "hidden_dim",
    "official_ar_config",
    "official_family",
    "official_post_config",
    "official_tokenizer_config",
    "official_vocabulary",
]
