"""The Prologue sampler and the diffusers pipeline."""

# PrologueTokenizerModel, PrologueARForCausalLM and PreTrainedModel are exported here because model_index.json names
# this module as the components' library: diffusers looks the classes and their loadable base class up on it.
from transformers import PreTrainedModel

from ..models import PrologueARForCausalLM, PrologueTokenizerModel
from ..models.modeling_prologue_post import ProloguePostModel
from .decoding import PackedARDecoder, packed_decoder_unsupported
from .imagenet_labels import IMAGENET_CLASS_NAMES, imagenet_id2label
from .pipeline_prologue import ProloguePipeline, ProloguePipelineOutput, prologue_model_card
from .sampling import (
    SAMPLING_PRESETS,
    GuidanceSchedule,
    PreallocatedCache,
    PrologueSegmentLogitsProcessor,
    SamplerOutput,
    SamplingParams,
    generate_ids,
)

__all__ = [
    "IMAGENET_CLASS_NAMES",
    "SAMPLING_PRESETS",
    "GuidanceSchedule",
    "PackedARDecoder",
    "PreTrainedModel",
    "PreallocatedCache",
    "PrologueARForCausalLM",
    "PrologueSegmentLogitsProcessor",
    "ProloguePipeline",
    "ProloguePipelineOutput",
    "ProloguePostModel",
    "PrologueTokenizerModel",
    "SamplerOutput",
    "SamplingParams",
    "generate_ids",
    "imagenet_id2label",
    "packed_decoder_unsupported",
    "prologue_model_card",
]
