"""Replay an official stage-1 step fixture with the official training mode and measure every deviation.

A step fixture (e.g. ``tests/fixtures/official-prologue-stage1-step``, see its README) holds the official config,
the starting weights in the stage-1 slots (``start/``), one batch, every random draw, every loss term, per-parameter
gradient norms and the weights after each iteration (``iter1/``, ``iter2/``, ...). :func:`replay_official_step_fixture`
loads ``start/`` through :func:`~prologue_hf.conversion.official_stage1.load_official_stage1`, injects the draws, runs
the iterations with :class:`~prologue_hf.training.official_stage1.OfficialStage1Stepper` and compares. Every size and
setting is read from the folder.

Tolerances (the fixture README's): losses and logits ``1e-5`` (relative to ``max(1, |value|)``), token ids exact,
weights within ``1e-6`` for all but a fraction ``1e-4`` of the elements and within ``2.1e-4`` for all. Gradient norms
are compared relatively (``1e-4``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..conversion.official_config import OfficialConfig
from ..conversion.official_stage1 import load_official_stage1, official_state
from .official_stage1 import OfficialStage1Settings, OfficialStage1Stepper

LOSS_TOLERANCE = 1e-5
LOGIT_TOLERANCE = 1e-5
WEIGHT_TOLERANCE = 1e-6
WEIGHT_OUTLIER_FRACTION = 1e-4
WEIGHT_OUTLIER_TOLERANCE = 2.1e-4
GRAD_NORM_RELATIVE_TOLERANCE = 1e-4
_MODULE_SLOTS = {"enc": "model", "dec": "model_1", "ar": "model_5"}


@dataclass
class ParityReport:
    """Deviations of a replay from a step fixture.

    ``losses``: ``{term: max |ours - official| / max(1, |official|) over the steps}``; ``logits``: max abs deviation of
    the AR logits; ``ids_equal``: every encoder step's token ids equal; ``grad_norms``: ``{module: max relative
    deviation}``; ``weights``: ``{"iterK/module": {"max_abs", "fraction_above_1e-6"}}``; ``failures``: messages.
    """

    losses: dict[str, float] = field(default_factory=dict)
    logits: float = 0.0
    ids_equal: bool = True
    grad_norms: dict[str, float] = field(default_factory=dict)
    weights: dict[str, dict[str, float]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def lines(self) -> list[str]:
        """A human-readable table of the largest deviation per loss term and per module."""
        out = ["loss term                              max deviation (relative to max(1, |official|))"]
        out += [f"  {name:<36} {value:.3e}" for name, value in sorted(self.losses.items())]
        out.append(f"AR logits (max abs)                    {self.logits:.3e}")
        out.append(f"token ids equal                        {self.ids_equal}")
        out.append("gradient norms (max relative deviation per module)")
        out += [f"  {name:<36} {value:.3e}" for name, value in self.grad_norms.items()]
        out.append("weights after each iteration          max abs      fraction > 1e-6")
        out += [
            f"  {name:<36} {w['max_abs']:.3e}    {w['fraction_above_1e-6']:.2e}" for name, w in self.weights.items()
        ]
        out.append("OK" if self.ok else "MISMATCH:\n  " + "\n  ".join(self.failures))
        return out


def _relative(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return float((ours.double() - ref.double()).abs().max() / max(1.0, float(ref.double().abs().max())))


def replay_official_step_fixture(folder: str | Path) -> ParityReport:
    """Load ``folder/start``, run the recorded iterations with the injected draws, compare with the fixture."""
    folder = Path(folder)
    for name in ("config.yaml", "inputs.safetensors", "random_draws.safetensors", "losses.safetensors", "start"):
        if not (folder / name).exists():
            raise FileNotFoundError(f"{folder} is not an official stage-1 step fixture: {name} is missing")
    config = OfficialConfig.from_yaml(folder / "config.yaml")
    problems = OfficialStage1Settings.unsupported_official_settings(config)
    if float(config.get("warmup_steps", 0)) != 0:
        problems.append(f"warmup_steps = {config.get('warmup_steps')} (the replay runs at the peak lr; needs 0)")
    phases = str(config.get("phases", ""))
    groups = phases.split(":")[1].split(",") if phases.count(":") == 2 else []
    if not (phases.endswith(":1,1") and len(groups) == 2 and "DO_PRIOR_ENC" in groups[0] and "DO_PRIOR_AR" in groups[1]):
        problems.append(f"phases = {phases!r} (the replay runs an encoder step then an AR step: '...:<enc>,<ar>:1,1')")
    if "DO_LPIPS" in phases:
        problems.append("DO_LPIPS is on (the official LPIPS needs pretrained VGG weights; the step fixtures turn it off)")
    iterations_on_disk = len([p for p in folder.glob("iter*") if p.name[4:].isdigit()])
    if "DO_GAN" in phases and int(config.get("gan_start", 0)) < 2 * iterations_on_disk:
        problems.append(f"gan_start = {config.get('gan_start')} (the official GANLoss discriminator has no counterpart here)")
    if problems:
        raise NotImplementedError(f"{folder}: " + "; ".join(problems))
    settings = OfficialStage1Settings.from_official_config(config)
    models = load_official_stage1(folder / "start", config)
    maps = models.maps()
    stepper = OfficialStage1Stepper(models.tokenizer, models.ar, maps, settings)

    inputs = load_file(str(folder / "inputs.safetensors"))
    draws = load_file(str(folder / "random_draws.safetensors"))
    losses = load_file(str(folder / "losses.safetensors"))
    outputs = load_file(str(folder / "step_outputs.safetensors"))
    grad_norms = load_file(str(folder / "grad_norms.safetensors"))
    manifest = json.loads((folder / "manifest.json").read_text())
    grad_names = manifest["grad_norm_param_names"]
    iterations = sorted(int(p.name[4:]) for p in folder.glob("iter*") if p.name[4:].isdigit())
    if not iterations:
        raise FileNotFoundError(f"{folder}: no iter1/, iter2/, ... folders")

    report = ParityReport()
    pixels = inputs["images"].float()
    labels = inputs["class_ids"].long() if config.get("use_label", True) else None

    def compare_step(step: int, result) -> None:
        for name, value in result.losses.items():
            key = f"g{step}_loss_{name}"
            if key in losses:
                deviation = _relative(value, losses[key])
            elif f"g{step}_{name}" in manifest["scalars"]:
                deviation = abs(float(value) - manifest["scalars"][f"g{step}_{name}"])
            else:
                continue
            report.losses[name] = max(report.losses.get(name, 0.0), deviation)
            if deviation > LOSS_TOLERANCE:
                report.failures.append(f"g{step} {name}: {float(value):.7g} vs official {float(losses[key]) if key in losses else manifest['scalars'][f'g{step}_{name}']:.7g}")
        if f"g{step}_ar_logits" in outputs:
            ref = outputs[f"g{step}_ar_logits"]
            deviation = float((result.tensors["ar_logits"] - ref).abs().max())
            report.logits = max(report.logits, deviation)
            if deviation > LOGIT_TOLERANCE * max(1.0, float(ref.abs().max())):
                report.failures.append(f"g{step} AR logits deviate by {deviation:.3e}")
        if not torch.equal(result.tensors["ar_targets"], outputs[f"g{step}_ar_targets"]):
            report.ids_equal = False
            report.failures.append(f"g{step}: AR targets (token ids) differ")
        if "indices" in result.tensors and not torch.equal(result.tensors["indices"], outputs[f"g{step}_indices"]):
            report.ids_equal = False
            report.failures.append(f"g{step}: encoder token ids differ")
        for module, norms in result.grad_norms.items():
            ref = grad_norms[f"g{step}_{module}_param_grad_norm"]
            ours = torch.tensor([norms[n] for n in grad_names[module]], dtype=torch.float64)
            deviation = float(((ours - ref).abs() / ref.abs().clamp_min(1e-12)).max())
            report.grad_norms[module] = max(report.grad_norms.get(module, 0.0), deviation)
            if deviation > GRAD_NORM_RELATIVE_TOLERANCE:
                worst = grad_names[module][int(((ours - ref).abs() / ref.abs().clamp_min(1e-12)).argmax())]
                report.failures.append(f"g{step} {module} gradient norm of {worst} deviates by {deviation:.3e} (relative)")

    for iteration in iterations:
        enc_step, ar_step = 2 * (iteration - 1), 2 * (iteration - 1) + 1
        label_drop = draws.get(f"it{iteration}_label_drop_mask")
        enc = stepper.encoder_step(
            pixels, labels, label_drop_mask=None if label_drop is None else label_drop.reshape(-1),
            visual_drop_mask=draws.get(f"g{enc_step}_vis_drop_mask"), record_grad_norms=True,
        )
        compare_step(enc_step, enc)
        ar = stepper.ar_step(visual_drop_mask=draws.get(f"g{ar_step}_vis_drop_mask"), record_grad_norms=True)
        compare_step(ar_step, ar)
        for module, official_map in maps.items():
            reference = load_file(str(folder / f"iter{iteration}" / f"{_MODULE_SLOTS[module]}.safetensors"))
            ours = official_state(official_map)
            deltas = torch.cat([(ours[k].double() - reference[k].double()).abs().flatten() for k in ours])
            stats = {
                "max_abs": float(deltas.max()),
                "fraction_above_1e-6": float((deltas > WEIGHT_TOLERANCE).double().mean()),
            }
            report.weights[f"iter{iteration}/{module}"] = stats
            if stats["max_abs"] > WEIGHT_OUTLIER_TOLERANCE or stats["fraction_above_1e-6"] > WEIGHT_OUTLIER_FRACTION:
                report.failures.append(
                    f"iter{iteration} {module} weights: max |d| {stats['max_abs']:.3e}, "
                    f"{stats['fraction_above_1e-6']:.2e} of elements above {WEIGHT_TOLERANCE}"
                )
    return report


__all__ = ["ParityReport", "replay_official_step_fixture"]
