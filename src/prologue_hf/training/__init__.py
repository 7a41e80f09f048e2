"""Training utilities: data loading, the routed stage-1 loss, Trainer subclasses."""

from .data import ImageTrainingCollator, ImageTransform, load_image_dataset, prepare_image_dataset, to_rgb

__all__ = ["ImageTrainingCollator", "ImageTransform", "load_image_dataset", "prepare_image_dataset", "to_rgb"]
