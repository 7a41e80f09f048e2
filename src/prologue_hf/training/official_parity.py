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
from ..models.official_parametrization import OfficialParameterMap
from .official_stage1 import OfficialStage1Settings, OfficialStage1Stepper, OfficialStepOutput

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


def _load_replayable_config(folder: Path) -> OfficialConfig:
    """``folder/config.yaml`` once the folder is a complete step fixture whose settings this replay supports."""
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
    return config


@dataclass
class _StepReferences:
    """The fixture's recorded per-step values: ``losses`` (``g{step}_loss_{term}``), ``outputs`` (AR logits and
    targets, encoder ids), ``grad_norms`` (``g{step}_{module}_param_grad_norm``, one entry per parameter),
    ``scalars`` (loss terms recorded as plain numbers) and ``grad_names`` (``{module: parameter names}``)."""

    losses: dict[str, torch.Tensor]
    outputs: dict[str, torch.Tensor]
    grad_norms: dict[str, torch.Tensor]
    scalars: dict[str, float]
    grad_names: dict[str, list[str]]

    @classmethod
    def load(cls, folder: Path) -> _StepReferences:
        """Read ``losses``, ``step_outputs`` and ``grad_norms`` ``.safetensors`` and ``manifest.json`` from ``folder``."""
        losses = load_file(str(folder / "losses.safetensors"))
        outputs = load_file(str(folder / "step_outputs.safetensors"))
        grad_norms = load_file(str(folder / "grad_norms.safetensors"))
        manifest = json.loads((folder / "manifest.json").read_text())
        return cls(losses, outputs, grad_norms, manifest["scalars"], manifest["grad_norm_param_names"])


def _compare_losses(report: ParityReport, step: int, result: OfficialStepOutput, refs: _StepReferences) -> None:
    """Record each loss term's deviation (relative for tensors, absolute for recorded scalars)."""
    for name, value in result.losses.items():
        key = f"g{step}_loss_{name}"
        if key in refs.losses:
            deviation = _relative(value, refs.losses[key])
        elif f"g{step}_{name}" in refs.scalars:
            deviation = abs(float(value) - refs.scalars[f"g{step}_{name}"])
        else:
            continue
        report.losses[name] = max(report.losses.get(name, 0.0), deviation)
        if deviation > LOSS_TOLERANCE:
            official = float(refs.losses[key]) if key in refs.losses else refs.scalars[f"g{step}_{name}"]
            report.failures.append(f"g{step} {name}: {float(value):.7g} vs official {official:.7g}")


def _compare_outputs(report: ParityReport, step: int, result: OfficialStepOutput, refs: _StepReferences) -> None:
    """Record the AR logits' deviation and whether the AR targets and encoder token ids are exactly equal."""
    if f"g{step}_ar_logits" in refs.outputs:
        ref = refs.outputs[f"g{step}_ar_logits"]
        deviation = float((result.tensors["ar_logits"] - ref).abs().max())
        report.logits = max(report.logits, deviation)
        if deviation > LOGIT_TOLERANCE * max(1.0, float(ref.abs().max())):
            report.failures.append(f"g{step} AR logits deviate by {deviation:.3e}")
    if not torch.equal(result.tensors["ar_targets"], refs.outputs[f"g{step}_ar_targets"]):
        report.ids_equal = False
        report.failures.append(f"g{step}: AR targets (token ids) differ")
    if "indices" in result.tensors and not torch.equal(result.tensors["indices"], refs.outputs[f"g{step}_indices"]):
        report.ids_equal = False
        report.failures.append(f"g{step}: encoder token ids differ")


def _compare_grad_norms(report: ParityReport, step: int, result: OfficialStepOutput, refs: _StepReferences) -> None:
    """Record each module's largest relative per-parameter gradient-norm deviation, naming the worst parameter."""
    for module, norms in result.grad_norms.items():
        ref = refs.grad_norms[f"g{step}_{module}_param_grad_norm"]
        ours = torch.tensor([norms[n] for n in refs.grad_names[module]], dtype=torch.float64)
        deviation = float(((ours - ref).abs() / ref.abs().clamp_min(1e-12)).max())
        report.grad_norms[module] = max(report.grad_norms.get(module, 0.0), deviation)
        if deviation > GRAD_NORM_RELATIVE_TOLERANCE:
            worst = refs.grad_names[module][int(((ours - ref).abs() / ref.abs().clamp_min(1e-12)).argmax())]
            report.failures.append(f"g{step} {module} gradient norm of {worst} deviates by {deviation:.3e} (relative)")


def _compare_step(report: ParityReport, step: int, result: OfficialStepOutput, refs: _StepReferences) -> None:
    """Compare one encoder or AR step (``g{step}``) with the fixture: losses, outputs, then gradient norms."""
    _compare_losses(report, step, result, refs)
    _compare_outputs(report, step, result, refs)
    _compare_grad_norms(report, step, result, refs)


def _compare_weights(
    report: ParityReport, folder: Path, iteration: int, maps: dict[str, OfficialParameterMap]
) -> None:
    """Record, per module, how far our weights after ``iteration`` lie from ``folder/iter{iteration}/``."""
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


def replay_official_step_fixture(folder: str | Path) -> ParityReport:
    """Load ``folder/start``, run the recorded iterations with the injected draws, compare with the fixture."""
    folder = Path(folder)
    config = _load_replayable_config(folder)
    settings = OfficialStage1Settings.from_official_config(config)
    models = load_official_stage1(folder / "start", config)
    maps = models.maps()
    stepper = OfficialStage1Stepper(models.tokenizer, models.ar, maps, settings, keep_ar_logits=True)

    inputs = load_file(str(folder / "inputs.safetensors"))
    draws = load_file(str(folder / "random_draws.safetensors"))
    refs = _StepReferences.load(folder)
    iterations = sorted(int(p.name[4:]) for p in folder.glob("iter*") if p.name[4:].isdigit())
    if not iterations:
        raise FileNotFoundError(f"{folder}: no iter1/, iter2/, ... folders")

    report = ParityReport()
    pixels = inputs["images"].float()
    labels = inputs["class_ids"].long() if config.get("use_label", True) else None

    for iteration in iterations:
        enc_step, ar_step = 2 * (iteration - 1), 2 * (iteration - 1) + 1
        label_drop = draws.get(f"it{iteration}_label_drop_mask")
        enc = stepper.encoder_step(
            pixels, labels, label_drop_mask=None if label_drop is None else label_drop.reshape(-1),
            visual_drop_mask=draws.get(f"g{enc_step}_vis_drop_mask"), record_grad_norms=True,
        )
        _compare_step(report, enc_step, enc, refs)
        ar = stepper.ar_step(visual_drop_mask=draws.get(f"g{ar_step}_vis_drop_mask"), record_grad_norms=True)
        _compare_step(report, ar_step, ar, refs)
        _compare_weights(report, folder, iteration, maps)
    return report


__all__ = ["ParityReport", "replay_official_step_fixture"]
