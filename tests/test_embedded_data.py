"""Data the package ships or takes from a dependency: the embedded Fashion-MNIST subset, the ImageNet class names."""

import numpy as np
import pytest

from prologue_hf.fashion_mnist import FASHION_MNIST_CLASSES, load_fashion_mnist


def test_embedded_fashion_mnist_subset():
    ds = load_fashion_mnist("test", image_size=32, max_per_class=3)
    assert len(ds) == 30
    assert ds.features["label"].names == FASHION_MNIST_CLASSES
    assert sorted(set(ds["label"])) == list(range(10))
    image = np.asarray(ds[0]["image"])
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    # grey replicated to RGB, padded with 2 black pixels on each side
    assert (image[..., 0] == image[..., 1]).all() and (image[..., 0] == image[..., 2]).all()
    assert image[:2].max() == 0 and image[:, -2:].max() == 0 and image[2:30, 2:30].max() > 0


def test_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        load_fashion_mnist("val")
    with pytest.raises(ValueError, match="image_size must be >= 28"):
        load_fashion_mnist("test", image_size=16)


def test_imagenet_labels_are_torchvisions_categories_in_class_id_order():
    from prologue_hf.pipelines.imagenet_labels import IMAGENET_CLASS_NAMES, imagenet_id2label

    id2label = imagenet_id2label()
    assert sorted(id2label) == list(range(1000)) and len(set(id2label.values())) == 1000
    # spot checks of the ILSVRC-2012 order, including the two WordNet names shared by two synsets each
    expected = {0: "tench", 1: "goldfish", 134: "crane bird", 517: "crane", 638: "maillot", 639: "maillot tank suit",
                999: "toilet tissue"}
    assert {i: id2label[i] for i in expected} == expected
    assert tuple(id2label.values()) == IMAGENET_CLASS_NAMES
