"""Stage-2 pretokenization: a frozen tokenizer turns an image dataset into compact integer ids (paper appendix E).

Stage 2 trains the full-size AR "from scratch on the frozen tokenizer", so every image is tokenized once, up front,
with the paper's "ten-crop" augmentation, one row per view. The parts, one module each:

=================  =====================================================================================================
``info``           the on-disk format: columns, :class:`PretokenizedInfo` (tokenizer identity and vocabulary, crop
                   settings, source; refuses ids of another tokenizer), :func:`load_pretokenized_dataset`
``views``          :class:`TenCropViews`, the paper's ten-crop views of one image, and batches of them
``shards``         the sharded, resumable, multi-process run: :func:`pretokenize_dataset`, :class:`PretokenizeConfig`
``merge``          the finished shards -> one dataset in the output folder
``hub``            :func:`push_pretokenized_to_hub`
``script``         the command line of ``examples/pretokenize.py``: :func:`run_pretokenize`
=================  =====================================================================================================

Every public name is importable from ``prologue_hf.training.pretokenize``. Which tokenizer produced a set of ids is
:func:`prologue_hf.identity.tokenizer_identity` (re-exported here).
"""

from ...identity import tokenizer_identity
from .hub import push_pretokenized_to_hub
from .info import (
    PRETOKENIZED_FORMAT,
    PRETOKENIZED_FORMAT_VERSION,
    PRETOKENIZED_INFO_FILE,
    PretokenizedInfo,
    ids_dtype,
    load_pretokenized_dataset,
    output_features,
)
from .merge import merge_shards
from .script import PretokenizeScriptArguments, run_pretokenize
from .shards import SHARDS_DIR, PretokenizeConfig, encode_views, pretokenize_dataset
from .views import CROP_POSITIONS, TenCropViews

__all__ = [
    "CROP_POSITIONS",
    "PRETOKENIZED_FORMAT",
    "PRETOKENIZED_FORMAT_VERSION",
    "PRETOKENIZED_INFO_FILE",
    "SHARDS_DIR",
    "PretokenizeConfig",
    "PretokenizeScriptArguments",
    "PretokenizedInfo",
    "TenCropViews",
    "encode_views",
    "ids_dtype",
    "load_pretokenized_dataset",
    "merge_shards",
    "output_features",
    "pretokenize_dataset",
    "push_pretokenized_to_hub",
    "run_pretokenize",
    "tokenizer_identity",
]
