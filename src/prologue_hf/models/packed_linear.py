"""CPU weight packing for few-row inference, as a swap of a model's ``nn.Linear`` modules.

Sampling pushes ``R`` rows (``2B`` with guidance) through every weight matrix once per generated token. At so few
rows a step is bound by reading the weights, and ``F.linear`` re-packs each weight inside every BLAS call: for the B
AR in float32 at 16 rows that is ~35% of the matmul time (``benchmarks/bench_linear_kernels.py``,
``docs/benchmarks.md``). :class:`PackedLinear` lays a weight out once in the layout the CPU kernel wants for ``R``
rows (MKL's packed SGEMM for float32, oneDNN's reordered weight for bfloat16) and :func:`packed_linears` swaps it in
for the plain ``nn.Linear`` modules of a model for the duration of a ``with`` block, the way quantisation libraries
replace layers. The model's own forward runs unchanged, so every model option (q/k-norm, GQA, biases, RoPE variants,
adapters around a base layer) keeps working without any decoder code knowing about it.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn


def packed_kernel(dtype: torch.dtype, device: torch.device) -> str:
    """The packed kernel this build offers for weights of ``dtype`` on ``device``: ``"mkl"`` (CPU float32),
    ``"onednn"`` (CPU bfloat16 where oneDNN supports it) or ``"linear"`` (none: plain ``F.linear``)."""
    if device.type != "cpu":
        return "linear"
    if dtype == torch.float32 and torch.backends.mkl.is_available():
        return "mkl"
    if dtype == torch.bfloat16 and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return "onednn"
    return "linear"


class PackedWeight:
    """A weight ``[out, in]`` (and bias) laid out once in the packed kernel's format for ``rows``-row inputs.

    ``kernel`` is ``"mkl"``, ``"onednn"`` or ``"linear"`` when the packed kernel is missing or disagrees with
    ``F.linear`` on a probe input (checked when built; the caller then keeps the plain product). Only the packed copy
    is kept, not ``weight``.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, rows: int):
        if rows < 1:
            raise ValueError(f"rows must be >= 1, got {rows}")
        self.rows, self.shape = rows, tuple(weight.shape)  # (out_features, in_features)
        self.bias = None if bias is None else bias.detach()
        self.kernel = packed_kernel(weight.dtype, weight.device)
        self._packed = None
        weight = weight.detach()
        try:
            if self.kernel == "mkl":
                self._packed = torch.ops.mkl._mkl_reorder_linear_weight(weight, rows)
                # the MKL op also takes the plain matrix (read only for another row count, which never reaches it);
                # a zero-stride tensor of the right shape holds no second copy
                self._shape_only = weight.new_zeros(1).expand(self.shape)
            elif self.kernel == "onednn":
                self._packed = torch.ops.mkldnn._reorder_linear_weight(weight, rows)
        except (RuntimeError, AttributeError):  # a build without the kernel: the plain product
            self.kernel = "linear"
        if self.kernel != "linear" and not self._agrees_with(weight):
            self.kernel, self._packed = "linear", None

    def _agrees_with(self, weight: torch.Tensor) -> bool:
        probe = torch.randn(self.rows, self.shape[1], generator=torch.Generator().manual_seed(0)).to(weight.dtype)
        try:
            packed = self._product(probe)
        except RuntimeError:
            return False
        reference = F.linear(probe, weight, self.bias)
        tolerance = 1e-4 if weight.dtype == torch.float32 else 2e-2
        scale = reference.float().abs().max().clamp_min(1.0)
        error = (packed.float() - reference.float()).abs().max() / scale
        return packed.shape == reference.shape and bool(error <= tolerance)

    def _product(self, x: torch.Tensor) -> torch.Tensor:
        """The packed kernel's product; for ``"mkl"``, ``x`` must have exactly ``rows`` rows."""
        if self.kernel == "mkl":
            return torch.ops.mkl._mkl_linear.default(x, self._packed, self._shape_only, self.bias, self.rows)
        return torch.ops.mkldnn._linear_pointwise.default(x, self._packed, self.bias, "none", [], "")

    def __call__(self, x: torch.Tensor) -> torch.Tensor | None:
        """``x @ weight.T + bias`` for ``x`` ``[..., in]``, or ``None`` when this layout does not serve ``x`` (more
        rows than packed for, e.g. a multi-position prefill: the caller takes ``F.linear``)."""
        if self.kernel == "onednn":
            return self._product(x)
        if self.kernel != "mkl":
            return None
        rows = x.numel() // self.shape[1]
        if rows == self.rows:
            return self._product(x)
        if rows > self.rows:
            return None
        padded = x.new_zeros(self.rows, self.shape[1])  # fewer rows: the product costs the same, it reads the weight
        padded[:rows] = x.reshape(rows, self.shape[1])
        return self._product(padded)[:rows].view(*x.shape[:-1], self.shape[0])


class SharedProduct:
    """One packed product for sibling linears that read the same input (q / k / v, gate / up): the first sibling
    called with an input computes ``x @ [W_1; W_2; ...].T`` and every sibling takes its columns of it.

    The result is reused only for the very same input tensor, unmodified (same object, same version counter), so a
    model that feeds the siblings different inputs still gets the right products, just without the saving.
    """

    def __init__(self, linears: list[nn.Linear], rows: int):
        with torch.no_grad():
            weight = torch.cat([linear.weight for linear in linears])  # dropped once packed
            bias = None
            if any(linear.bias is not None for linear in linears):
                bias = torch.cat([
                    linear.bias if linear.bias is not None else linear.weight.new_zeros(linear.out_features)
                    for linear in linears
                ])
            self.packed = PackedWeight(weight, bias, rows)
        self.sizes = [linear.out_features for linear in linears]
        self._input = self._version = self._parts = None

    def part(self, index: int, x: torch.Tensor) -> torch.Tensor | None:
        """Sibling ``index``'s columns of the shared product of ``x`` (``None``: the layout does not serve ``x``)."""
        if x is not self._input or x._version != self._version:
            out = self.packed(x)
            # every sibling's columns as views in one split (one op, not one slice per sibling)
            self._parts = None if out is None else out.split(self.sizes, dim=-1)
            self._input, self._version = x, x._version
        return None if self._parts is None else self._parts[index]


class PackedLinear(nn.Module):
    """Inference stand-in for an ``nn.Linear`` whose weight ``[out, in]`` is also kept in the layout that is fastest
    for ``rows``-row inputs.

    The module holds the original ``weight`` / ``bias`` parameters (same objects, same state-dict keys, no copy) and
    either its own :class:`PackedWeight` or a part of a :class:`SharedProduct` with its siblings (``shared`` and
    ``index``). Inputs the packed layout serves take it; more rows than packed for (a multi-position prefill) and
    calls that need a gradient take ``F.linear`` on the original parameters. The packed copy does not follow later
    updates of ``weight``: build it after the last one (:func:`packed_linears` does, on entry).

    >>> linear = nn.Linear(32, 48)
    >>> packed = PackedLinear(linear, rows=4)
    >>> x = torch.randn(4, 1, 32)
    >>> with torch.no_grad():
    ...     torch.allclose(packed(x), linear(x), atol=1e-5)
    True
    """

    def __init__(self, linear: nn.Linear, rows: int, shared: SharedProduct | None = None, index: int = 0):
        super().__init__()
        self.in_features, self.out_features, self.rows = linear.in_features, linear.out_features, rows
        self.weight, self.bias = linear.weight, linear.bias
        self.shared, self.index = shared, index
        self.packed = shared.packed if shared is not None else PackedWeight(linear.weight, linear.bias, rows)
        self.kernel = self.packed.kernel  # "mkl", "onednn" or "linear" (the packed layout is not used)
        # resolved once: this runs for every linear of every decode step, where Python overhead shows
        self._product = self.packed if shared is None else functools.partial(shared.part, index)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel != "linear" and not (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad)):
            out = self._product(x)
            if out is not None:
                return out
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        fused = f", fused part {self.index}" if self.shared is not None else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, rows={self.rows}, kernel={self.kernel}{fused}"


class SegmentHead(nn.Module):
    """Sampling stand-in for an output head ``nn.Linear`` (``[vocab, hidden]``) that computes only the logits of the
    ids a step may produce: one id range ``(lo, hi)`` at a time, chosen by :attr:`active`; the other logits are 0.

    A sampler masks every id outside the step's range to ``-inf`` anyway (after the guidance mix, where 0 stays
    finite: ``-inf`` rows would mix into NaN), so it reads the same values as from the full head while the step
    reads ``hi - lo`` rows of the head's weight instead of all of them (for the B AR's visual steps, 16,384 of 18,410
    rows; the head is ~14% of its decode step's weight reads, so this saves ~1.5%). Each range is packed like :class:`PackedWeight` for
    ``rows`` rows; ``active=None``, an input the layout does not serve (more rows, e.g. a prefill that keeps
    several positions) or a call that needs a gradient takes ``F.linear`` with the whole head. The module holds the
    head's own ``weight`` / ``bias`` (same objects, same state-dict keys).
    """

    def __init__(self, linear: nn.Linear, ranges: list[tuple[int, int]], rows: int):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias
        self._parts: dict[tuple[int, int], PackedWeight] = {}
        for lo, hi in sorted(set(ranges)):
            if not 0 <= lo < hi <= self.out_features:
                raise ValueError(f"ranges must lie in [0, {self.out_features}], got ({lo}, {hi})")
            bias = None if linear.bias is None else linear.bias[lo:hi]
            self._parts[(lo, hi)] = PackedWeight(linear.weight[lo:hi], bias, rows)
        #: the ``(lo, hi)`` of ``ranges`` the next call computes, or ``None`` for every logit
        self.active: tuple[int, int] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.active is None or (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad)):
            return F.linear(x, self.weight, self.bias)
        lo, hi = self.active
        part = self._parts[self.active](x)
        if part is None:  # no packed layout for x: the plain product of the same rows
            part = F.linear(x, self.weight[lo:hi], None if self.bias is None else self.bias[lo:hi])
        out = x.new_zeros(*x.shape[:-1], self.out_features)
        out[..., lo:hi] = part
        return out

    def extra_repr(self) -> str:
        kernels = sorted({part.kernel for part in self._parts.values()})
        return f"in_features={self.in_features}, out_features={self.out_features}, ranges={sorted(self._parts)}, " \
            f"kernel={'/'.join(kernels)}"


#: Names of sibling linears that read the same input in Llama-style blocks; :func:`packed_linears` packs each group
#: present in one parent module into one :class:`SharedProduct`.
SIBLING_GROUPS: tuple[tuple[str, ...], ...] = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


def _packable(module: nn.Module) -> bool:
    hooked = module._forward_hooks or module._forward_pre_hooks
    return type(module) is nn.Linear and not hooked and packed_kernel(module.weight.dtype, module.weight.device) != "linear"


def _replacements(
    parent: nn.Module, rows: int, head: nn.Module | None, head_ranges: list[tuple[int, int]] | None
) -> dict[str, nn.Module]:
    """The :class:`PackedLinear` s for the packable children of ``parent``: sibling groups share one product; the
    output ``head``, when ``head_ranges`` are given, becomes a :class:`SegmentHead`."""
    children = {name: child for name, child in parent.named_children() if _packable(child)}
    out: dict[str, nn.Module] = {}
    for name, child in children.items():
        if child is head and head_ranges is not None:
            out[name] = SegmentHead(child, head_ranges, rows)
    for group in SIBLING_GROUPS:
        members = [children.get(name) for name in group]
        same_input = len({(m.in_features, m.weight.dtype) for m in members if m is not None}) == 1
        if all(m is not None for m in members) and not any(n in out for n in group) and same_input:
            shared = SharedProduct(members, rows)
            out.update({name: PackedLinear(m, rows, shared, i) for i, (name, m) in enumerate(zip(group, members))})
    for name, child in children.items():
        if name not in out:
            out[name] = PackedLinear(child, rows)
    return {name: module for name, module in out.items() if getattr(module, "kernel", None) != "linear"}


@contextlib.contextmanager
def packed_linears(
    model: nn.Module, rows: int, head_ranges: list[tuple[int, int]] | None = None
) -> Iterator[list[nn.Module]]:
    """Swap every plain ``nn.Linear`` of ``model`` for a :class:`PackedLinear` laid out for ``rows`` rows while the
    block runs; the original modules are put back on exit, also after an error.

    ``head_ranges`` (id ranges ``(lo, hi)``, e.g. :meth:`PrologueVocabulary.step_id_ranges`) turns the output head
    (``model.get_output_embeddings()``) into a :class:`SegmentHead` over those ranges instead: the caller sets its
    ``active`` range before each step and reads only that range's logits (the others are 0).

    Swapped: modules whose type is exactly ``nn.Linear``, with no hooks (none at all in a model carrying accelerate
    hooks: they move the weights at every forward), whose weight has a packed kernel on its device
    and dtype (CPU float32 / bfloat16). Anything else is left as it is (subclasses such as LoRA or quantized layers,
    hooked modules, accelerator weights), so the swap never changes what the forward computes, only how fast.
    Siblings named in :data:`SIBLING_GROUPS` (q / k / v, gate / up) under one parent share one packed product: fewer,
    larger products, which is what pays at few rows.

    Yields the swapped-in modules (empty when nothing could be packed).

    >>> from prologue_hf.testing import tiny_ar
    >>> ar = tiny_ar()
    >>> with packed_linears(ar, rows=2) as swapped:
    ...     inside = type(ar.lm_head).__name__
    >>> inside, type(ar.lm_head).__name__
    ('PackedLinear', 'Linear')
    """
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    if any(hasattr(module, "_hf_hook") for module in model.modules()):
        # accelerate's hooks (CPU offload, device maps) move weights around each forward: a packed copy made now
        # would be left behind on the wrong device or read from meta tensors, so the model runs as it is
        yield []
        return
    head = model.get_output_embeddings() if head_ranges is not None and hasattr(model, "get_output_embeddings") else None
    try:
        for parent in list(model.modules()):
            for name, replacement in _replacements(parent, rows, head, head_ranges).items():
                swapped.append((parent, name, getattr(parent, name)))
                setattr(parent, name, replacement)
        yield [getattr(parent, name) for parent, name, _ in swapped]
    finally:
        for parent, name, original in reversed(swapped):
            setattr(parent, name, original)


__all__ = [
    "PackedLinear",
    "PackedWeight",
    "SIBLING_GROUPS",
    "SegmentHead",
    "SharedProduct",
    "packed_kernel",
    "packed_linears",
]
