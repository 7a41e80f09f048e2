"""How fast a residual gate grows under AdamW: plain vector vs the official ``W c + b`` parameterisation.

    python examples/official_gate_growth.py --steps 100 --dim 64 --cond-dim 32

Issue 15's experiment: one gate of ``dim`` channels with a steady gradient ``dL/dg = -1`` per channel, AdamW with
beta = (0, 0.99), lr 1e-4, no weight decay, both forms started at the official init (plain: the folded value of that
init). Prints the mean ``|g|`` after ``--steps`` steps for each form. The conditioning vector ``c`` is the official
``cond_proj`` of the null label (``NullCondition``, official init) and is trained too, as in the official code.
"""

from __future__ import annotations

import argparse


def gate_growth(steps: int, dim: int, cond_dim: int, lr: float = 1e-4, seed: int = 0) -> dict[str, float]:
    import torch
    from torch.nn.utils import parametrize

    from prologue_hf.models.official_parametrization import (
        OFFICIAL_GATE_INIT_SCALE,
        OFFICIAL_LINEAR_INIT_STD,
        ConditionedVector,
        NullCondition,
    )

    generator = torch.Generator().manual_seed(seed)
    holder = torch.nn.Module()
    holder.gate = torch.nn.Parameter(torch.zeros(dim))
    condition = NullCondition(num_labels=11, cond_dim=cond_dim)
    with torch.no_grad():
        condition.proj.weight.copy_(torch.nn.init.trunc_normal_(torch.empty(cond_dim, 11), std=OFFICIAL_LINEAR_INIT_STD, generator=generator))
        condition.proj.bias.zero_()
    parametrization = ConditionedVector(condition, dim, 0.0)
    with torch.no_grad():
        parametrization.weight.copy_(
            torch.nn.init.trunc_normal_(torch.empty(dim, cond_dim), std=OFFICIAL_LINEAR_INIT_STD, generator=generator)
            * OFFICIAL_GATE_INIT_SCALE
        )
    parametrize.register_parametrization(holder, "gate", parametrization, unsafe=True)
    plain = torch.nn.Parameter(holder.gate.detach().clone())  # the folded form, same starting value

    results = {}
    for name, params, gate in (
        ("official W c + b", list(holder.parameters()), lambda: holder.gate),
        ("plain vector", [plain], lambda: plain),
    ):
        optimizer = torch.optim.AdamW(params, lr=lr, betas=(0.0, 0.99), eps=1e-8, weight_decay=0.0)
        for _ in range(steps):
            optimizer.zero_grad()
            (-gate().sum()).backward()
            optimizer.step()
        results[name] = float(gate().detach().abs().mean())
    results["|c| (official, after training)"] = float(condition().detach().norm())
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--cond-dim", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-4)
    args = parser.parse_args(argv)
    results = gate_growth(args.steps, args.dim, args.cond_dim, args.lr)
    for name, value in results.items():
        print(f"{name:<32} {value:.4f}")
    official, plain = results["official W c + b"], results["plain vector"]
    print(f"ratio official / plain: {official / plain:.1f}x after {args.steps} AdamW steps (beta (0, 0.99), lr {args.lr:g})")


if __name__ == "__main__":
    main()
