"""The 1000 ImageNet-1k class names in class-id order: the default ``id2label`` of ``ProloguePipeline``.

They are torchvision's ImageNet category list, the metadata of its ImageNet weights (torchvision is a dependency and is
already imported with the pipeline; no weights are loaded): one short name per synset in the standard ILSVRC-2012
class-id order. The names are unique: the two synsets that share a WordNet name appear as 134 ``crane bird`` / 517
``crane`` and 638 ``maillot`` / 639 ``maillot tank suit``.
"""

from __future__ import annotations

from torchvision.models import ResNet50_Weights

IMAGENET_CLASS_NAMES: tuple[str, ...] = tuple(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])

if len(IMAGENET_CLASS_NAMES) != 1000 or len(set(IMAGENET_CLASS_NAMES)) != 1000:
    raise ImportError(
        f"torchvision's ImageNet categories are not 1000 unique names ({len(IMAGENET_CLASS_NAMES)} entries, "
        f"{len(set(IMAGENET_CLASS_NAMES))} unique): the pipeline's ImageNet labels would be wrong"
    )


def imagenet_id2label() -> dict[int, str]:
    """``{class id: name}`` for the 1000 ImageNet classes."""
    return dict(enumerate(IMAGENET_CLASS_NAMES))


__all__ = ["IMAGENET_CLASS_NAMES", "imagenet_id2label"]
