"""Analysis figures of the paper, computed from models and written as PNG (matplotlib for the plots).

* :func:`attention_maps` + :func:`plot_attention_layers`: AR attention per layer with the prologue/visual boundary
  (paper Fig. 6 and A2: head-averaged, self-attention diagonal and first token masked, gray dashed boundary).
* :func:`prologue_heatmaps` + :func:`plot_prologue_heatmaps`: attention from the visual tokens to each prologue token,
  averaged over the last 8 layers and all heads, on the visual grid (Fig. 7 / A4).
* :func:`fixed_prologue_resampling`: rows that share their prologue tokens while the visual tokens are resampled
  (Fig. 1 / A3); :func:`prologue_hf.image_grid.image_grid` tiles them with class names.
* :func:`plot_cfg_sweep`: gFID and IS against the visual guidance scale (Fig. A1), from
  :func:`prologue_hf.evaluation.run_cfg_sweep` results.

Figures are drawn on :class:`matplotlib.figure.Figure` objects (no pyplot state, no GUI backend needed).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from transformers.utils import logging

from ..models.modeling_prologue_ar import PrologueARForCausalLM
from ..models.modeling_prologue_tokenizer import PrologueTokenizerModel
from ..vocabulary import PrologueVocabulary

logger = logging.get_logger(__name__)


# --------------------------------------------------------------------------------------------------------- layout
def sequence_positions(vocabulary: PrologueVocabulary) -> dict[str, slice | int | None]:
    """Positions inside a full AR sequence ``[class][prologue x K][EOS][visual x N]`` (length ``1 + K + 1 + N``):
    ``class`` (0), ``prologue`` (slice), ``eos`` (index or None) and ``visual`` (slice)."""
    k = vocabulary.num_prologue_tokens
    visual_start = 1 + vocabulary.visual_start
    return {
        "class": 0,
        "prologue": slice(1, 1 + k),
        "eos": 1 + k if vocabulary.has_prologue else None,
        "visual": slice(visual_start, visual_start + vocabulary.num_visual_tokens),
    }


# --------------------------------------------------------------------------------------------------------- attention
@torch.no_grad()
def attention_maps(ar: PrologueARForCausalLM, input_ids: torch.Tensor, average_batch: bool = True) -> torch.Tensor:
    """Softmax attention probabilities of every layer and head for ``input_ids`` ``[B, T]``.

    The AR is switched to the eager attention implementation for the call (SDPA / flash kernels do not return
    attention weights) and switched back afterwards.

    Returns:
        ``[L, H, T, T]`` averaged over the batch (``average_batch=True``) or ``[B, L, H, T, T]``; entry
        ``[..., q, k]`` is the weight of key position ``k`` for query position ``q`` (causal: zero for ``k > q``,
        every row sums to 1).
    """
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be [B, T], got {list(input_ids.shape)}")
    previous = ar.config._attn_implementation
    if previous != "eager":
        ar.set_attn_implementation("eager")
    try:
        out = ar(input_ids.to(ar.device), output_attentions=True, use_cache=False)
    finally:
        if previous != "eager":
            ar.set_attn_implementation(previous)
    if not out.attentions:
        raise RuntimeError("the model returned no attention weights")
    maps = torch.stack([a.float() for a in out.attentions], dim=1)  # [B, L, H, T, T]
    return maps.mean(dim=0) if average_batch else maps


@torch.no_grad()
def attention_maps_for_images(
    tokenizer: PrologueTokenizerModel,
    ar: PrologueARForCausalLM,
    pixel_values: torch.Tensor,
    class_labels: torch.Tensor | Sequence[int],
) -> torch.Tensor:
    """Tokenize ``pixel_values`` ``[B, C, H, W]`` (in ``[-1, 1]``), build ``[class][prologue][EOS][visual]`` and return
    the batch-averaged attention ``[L, H, T, T]`` of ``ar`` on it (the paper's maps are over real images)."""
    encoded = tokenizer.encode(pixel_values.to(device=tokenizer.device, dtype=tokenizer.dtype))
    input_ids = ar.vocabulary.build_sequence(
        torch.as_tensor(class_labels), encoded.visual_ids.cpu(), None if encoded.prologue_ids is None else encoded.prologue_ids.cpu()
    )
    return attention_maps(ar, input_ids)


@torch.no_grad()
def attention_maps_for_samples(
    pipeline, class_labels: Sequence[int | str], generator: torch.Generator | None = None, sampling=None
) -> tuple[torch.Tensor, np.ndarray]:
    """Sample images with ``pipeline`` and return the batch-averaged attention ``[L, H, T, T]`` of its AR over the
    sampled sequences ``[class][prologue][EOS][visual]``, with the images (uint8 ``[B, H, W, 3]``)."""
    labels = [pipeline.get_label_ids(label)[0] if isinstance(label, str) else int(label) for label in class_labels]
    out = pipeline(class_labels=labels, generator=generator, sampling=sampling, output_type="uint8", return_ids=True)
    class_ids = pipeline.ar.config.vocabulary.class_token_ids(labels).to(out.ids.device)
    maps = attention_maps(pipeline.ar, torch.cat([class_ids[:, None], out.ids], dim=1))
    return maps, out.images.permute(0, 2, 3, 1).cpu().numpy()


def _head_average(maps: torch.Tensor) -> torch.Tensor:
    """``[L, H, T, T]`` -> ``[L, T, T]`` (``[L, T, T]`` passes through)."""
    if maps.ndim == 4:
        return maps.mean(dim=1)
    if maps.ndim == 3:
        return maps
    raise ValueError(f"maps must be [L, H, T, T] or [L, T, T], got {list(maps.shape)}")


def display_attention(maps: torch.Tensor, mask_diagonal: bool = True, mask_first: bool = True) -> torch.Tensor:
    """Head-averaged ``[L, T, T]`` maps with the paper's display masks as NaN: the diagonal (self-attention) and the
    first key column (the class token, an attention sink), plus the causal upper triangle."""
    maps = _head_average(maps).float().clone()
    t = maps.shape[-1]
    hidden = torch.triu(torch.ones(t, t, dtype=torch.bool), diagonal=1)
    if mask_diagonal:
        hidden |= torch.eye(t, dtype=torch.bool)
    if mask_first:
        hidden[:, 0] = True
    return maps.masked_fill(hidden.to(maps.device), float("nan"))


def _new_figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def plot_attention_layers(
    maps: torch.Tensor,
    vocabulary: PrologueVocabulary,
    path: str | os.PathLike,
    layers: Sequence[int] | None = None,
    mask_diagonal: bool = True,
    mask_first: bool = True,
    title: str | None = None,
) -> Path:
    """One panel per layer of head-averaged attention (query rows, key columns), with the prologue/visual boundary as
    a gray dashed line (paper Fig. 6 / A2; the paper shows layers 0/2/5/7/10/11 of a 12-layer AR).

    Args:
        maps: ``[L, H, T, T]`` or ``[L, T, T]`` from :func:`attention_maps`.
        layers: layer indices to draw (default: all).
    """
    shown = display_attention(maps, mask_diagonal, mask_first).cpu().numpy()
    layers = list(range(shown.shape[0])) if layers is None else list(layers)
    if not layers or any(not 0 <= i < shown.shape[0] for i in layers):
        raise ValueError(f"layers must be indices in [0, {shown.shape[0]}), got {layers}")
    positions = sequence_positions(vocabulary)
    boundary = positions["visual"].start - 0.5
    columns = min(len(layers), 6)
    rows = math.ceil(len(layers) / columns)
    fig = _new_figure(3.2 * columns, 3.2 * rows + (0.4 if title else 0))
    axes = np.atleast_1d(fig.subplots(rows, columns, squeeze=False)).ravel()
    for ax, layer in zip(axes, layers):
        panel = shown[layer]
        finite = panel[np.isfinite(panel)]
        vmax = float(np.quantile(finite, 0.99)) if finite.size else 1.0  # a few sinks would wash out the rest
        image = ax.imshow(panel, cmap="viridis", vmin=0.0, vmax=max(vmax, 1e-8), interpolation="nearest")
        if vocabulary.has_prologue:
            ax.axvline(boundary, color="gray", linestyle="--", linewidth=0.8)
            ax.axhline(boundary, color="gray", linestyle="--", linewidth=0.8)
        ax.set_title(f"layer {layer}")
        ax.set_xlabel("key")
        ax.set_ylabel("query")
        fig.colorbar(image, ax=ax, shrink=0.7)
    for ax in axes[len(layers) :]:
        ax.set_axis_off()
    if title:
        fig.suptitle(title)
    path = Path(path)
    fig.savefig(path)
    return path


def prologue_heatmaps(
    maps: torch.Tensor, vocabulary: PrologueVocabulary, layers: Sequence[int] | None = None
) -> torch.Tensor:
    """Attention from every visual token to each prologue token on the visual grid (paper Fig. 7 / A4).

    Args:
        maps: ``[L, H, T, T]`` or ``[L, T, T]`` from :func:`attention_maps`.
        layers: layers to average (default: the last 8, as the paper; all if fewer).

    Returns:
        ``[K, g, g]`` with ``g = sqrt(N)``: entry ``[k, r, c]`` is the mean attention weight that the visual token at
        grid cell ``(r, c)`` puts on prologue token ``k``.
    """
    if not vocabulary.has_prologue:
        raise ValueError("prologue heatmaps need a vocabulary with prologue tokens (num_prologue_tokens > 0)")
    grid = math.isqrt(vocabulary.num_visual_tokens)
    if grid * grid != vocabulary.num_visual_tokens:
        raise ValueError(f"num_visual_tokens ({vocabulary.num_visual_tokens}) is not a square grid (1D tokenizer?)")
    maps = _head_average(maps).float()
    num_layers = maps.shape[0]
    layers = list(range(max(0, num_layers - 8), num_layers)) if layers is None else list(layers)
    if not layers or any(not 0 <= i < num_layers for i in layers):
        raise ValueError(f"layers must be indices in [0, {num_layers}), got {layers}")
    positions = sequence_positions(vocabulary)
    mean = maps[layers].mean(dim=0)  # [T, T]
    visual_to_prologue = mean[positions["visual"], positions["prologue"]]  # [N, K]
    return visual_to_prologue.T.reshape(vocabulary.num_prologue_tokens, grid, grid)


def plot_prologue_heatmaps(
    heatmaps: torch.Tensor,
    path: str | os.PathLike,
    image: np.ndarray | None = None,
    columns: int = 8,
    alpha: float = 0.6,
    title: str | None = None,
) -> Path:
    """Draw ``[K, g, g]`` heatmaps, one panel per prologue token, optionally over ``image`` (uint8 ``[H, W, 3]``);
    each panel has its own color scale (the paper shows where each token is read, not how much)."""
    heatmaps = torch.as_tensor(heatmaps).float().cpu().numpy()
    if heatmaps.ndim != 3:
        raise ValueError(f"heatmaps must be [K, g, g], got {list(heatmaps.shape)}")
    count = heatmaps.shape[0]
    columns = min(columns, count)
    rows = math.ceil(count / columns)
    fig = _new_figure(1.8 * columns, 1.8 * rows + (0.4 if title else 0))
    axes = np.atleast_1d(fig.subplots(rows, columns, squeeze=False)).ravel()
    for k, ax in enumerate(axes):
        ax.set_axis_off()
        if k >= count:
            continue
        extent = None
        if image is not None:
            ax.imshow(image)
            extent = (-0.5, image.shape[1] - 0.5, image.shape[0] - 0.5, -0.5)
        ax.imshow(
            heatmaps[k], cmap="jet", alpha=alpha if image is not None else 1.0, extent=extent, interpolation="bilinear"
        )
        ax.set_title(f"prologue {k}", fontsize=8)
    if title:
        fig.suptitle(title)
    path = Path(path)
    fig.savefig(path)
    return path


# --------------------------------------------------------------------------------------------------------- Fig. 1
@torch.no_grad()
def fixed_prologue_resampling(
    pipeline,
    class_labels: Sequence[int | str],
    num_resamples: int = 8,
    sampling=None,
    generator: torch.Generator | None = None,
    reference_row: bool = True,
) -> np.ndarray:
    """Images for paper Fig. 1 / A3: for each label, sample one prologue, then ``num_resamples`` images whose visual
    tokens are resampled with that prologue held fixed.

    Args:
        pipeline: a :class:`~prologue_hf.ProloguePipeline` (its ``prologue_ids=`` argument does the holding).
        class_labels: class ids or names, one row each.
        sampling: ``SamplingParams`` or preset name (``None``: the pipeline default), used for every draw.
        generator: seeds every draw (deterministic output for a given generator state).
        reference_row: add a last row of ``num_resamples`` free samples (each with its own prologue) of the first
            label, as the bottom row of Fig. 1.

    Returns:
        uint8 ``[rows, num_resamples, H, W, 3]``.
    """
    if not pipeline.ar.config.vocabulary.has_prologue:
        raise ValueError("fixed-prologue resampling needs an AR with prologue tokens (num_prologue_tokens > 0)")
    if num_resamples < 1 or not class_labels:
        raise ValueError("num_resamples must be >= 1 and class_labels non-empty")
    labels = list(class_labels)
    common = dict(generator=generator, sampling=sampling, output_type="uint8")
    first = pipeline(class_labels=labels, return_ids=True, **common)  # one prologue per label
    images = [
        pipeline(class_labels=labels, num_images_per_label=num_resamples, prologue_ids=first.prologue_ids, **common).images
    ]
    if reference_row:
        images.append(pipeline(class_labels=labels[:1], num_images_per_label=num_resamples, **common).images)
    images = torch.cat(images).permute(0, 2, 3, 1).cpu().numpy()  # uint8 [rows * R, H, W, 3]
    return images.reshape(-1, num_resamples, *images.shape[1:])


# --------------------------------------------------------------------------------------------------------- Fig. A1
def plot_cfg_sweep(
    results: Mapping[str, Sequence[Mapping[str, float]]] | Sequence[Mapping[str, float]],
    path: str | os.PathLike,
    metrics: Sequence[str] = ("fid", "inception_score"),
    x_key: str = "scale",
    x_label: str = "visual CFG scale $s_{vis}$",
) -> Path:
    """gFID (left) and IS (right) against the guidance scale, one curve per variant (paper Fig. A1).

    Args:
        results: ``{variant: [{"scale": s, "fid": ..., "inception_score": ...}, ...]}`` or one such list (as
            returned by :func:`prologue_hf.evaluation.run_cfg_sweep`).
        metrics: result keys to plot, one panel each (e.g. ``("fd_effnet_lite0",)`` for an offline sweep).
    """
    if not isinstance(results, Mapping):
        results = {"": results}
    if not results or not any(results.values()):
        raise ValueError("results is empty")
    labels = {"fid": "gFID", "inception_score": "IS", "fd_effnet_lite0": "FD-EffNetLite0 (not FID)"}
    fig = _new_figure(4.5 * len(metrics), 3.6)
    axes = np.atleast_1d(fig.subplots(1, len(metrics), squeeze=False)).ravel()
    for ax, metric in zip(axes, metrics):
        for variant, rows in results.items():
            rows = sorted((r for r in rows if metric in r), key=lambda r: r[x_key])
            if not rows:
                raise ValueError(f"no result of variant {variant!r} has the metric {metric!r}")
            xs = [r[x_key] for r in rows]
            ys = [r[metric] for r in rows]
            ax.plot(xs, ys, marker="o", label=variant or None)
            if metric != "inception_score":  # mark the best (lowest) distance
                best = int(np.argmin(ys))
                ax.plot([xs[best]], [ys[best]], marker="*", markersize=12, color=ax.lines[-1].get_color())
        ax.set_xlabel(x_label)
        ax.set_ylabel(labels.get(metric, metric))
        ax.grid(alpha=0.3)
        if any(results):
            ax.legend(fontsize=8)
    path = Path(path)
    fig.savefig(path)
    return path


__all__ = [
    "attention_maps",
    "attention_maps_for_images",
    "attention_maps_for_samples",
    "display_attention",
    "fixed_prologue_resampling",
    "plot_attention_layers",
    "plot_cfg_sweep",
    "plot_prologue_heatmaps",
    "prologue_heatmaps",
    "sequence_positions",
]
