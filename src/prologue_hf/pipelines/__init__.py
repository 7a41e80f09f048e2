"""The Prologue sampler and the diffusers pipeline."""

# PrologueTokenizerModel, PrologueARForCausalLM and PreTrainedModel are exported here because model_index.json names
# this module as the components' library: diffusers looks the classes and their loadable base class up on it.
from transformers import PreTrainedModel

from ..models import PrologueARForCausalLM, PrologueTokenizerModel
from ..models.modeling_prologue_post import ProloguePostModel
from .filters import draw_categorical, top_k_filter, top_p_filter
from .imagenet_labels import IMAGENET_CLASS_NAMES, imagenet_id2label
from .kv_cache import PreallocatedCache
from .logits_processor import PrologueSegmentLogitsProcessor, StepPlan
from .pipeline_prologue import ProloguePipeline, ProloguePipelineOutput, prologue_model_card
from .sampling import SamplerOutput, generate_ids
from .sampling_params import SAMPLING_PRESETS, GuidanceSchedule, SamplingParams

__all__ = [
    "IMAGENET_CLASS_NAMES",
    "SAMPLING_PRESETS",
    "GuidanceSchedule",
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
    "StepPlan",
    "draw_categorical",
    "generate_ids",
    "imagenet_id2label",
    "prologue_model_card",
    "top_k_filter",
    "top_p_filter",
]
