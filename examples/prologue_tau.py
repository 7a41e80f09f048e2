"""How sharp is the Prob-STE soft-max for a prologue codebook geometry? (docs/training.md, choosing tau)

    python examples/prologue_tau.py --codebook-size 1024 --codebook-dim 14 --tau 0.1
    python examples/prologue_tau.py --codebook-size 64 --codebook-dim 8 --match-codebook-size 1024 --match-codebook-dim 14

On random unit features against a random L2-normalised codebook (the geometry at initialisation) it prints the median
soft-max ``p_max``, the median effective number of codes ``exp(entropy)`` (about how many codes get gradient per
token) and the median ``p1 - p2``. ``--match-*`` also prints the tau at which this codebook has the median ``p_max``
of the other geometry at ``--tau`` (e.g. a small demo codebook matched to the paper's 1024 x 14 at tau 0.1).
"""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--codebook-size", type=int, required=True)
    parser.add_argument("--codebook-dim", type=int, required=True)
    parser.add_argument("--tau", type=float, default=0.1)
    parser.add_argument("--match-codebook-size", type=int, default=None)
    parser.add_argument("--match-codebook-dim", type=int, default=None)
    parser.add_argument("--num-features", type=int, default=4096)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from prologue_hf.training.diagnostics import random_feature_softmax_geometry, temperature_for_p_max

    stats = random_feature_softmax_geometry(args.codebook_size, args.codebook_dim, args.tau, args.num_features, args.seed)
    print(
        f"{args.codebook_size} codes x {args.codebook_dim}-d, tau {args.tau:g}: median p_max {stats['p_max_median']:.3f}, "
        f"effective codes {stats['effective_codes_median']:.1f}, p1 - p2 {stats['top_gap_median']:.4f}"
    )
    if (args.match_codebook_size is None) != (args.match_codebook_dim is None):
        parser.error("--match-codebook-size and --match-codebook-dim go together")
    if args.match_codebook_size is not None:
        target = random_feature_softmax_geometry(
            args.match_codebook_size, args.match_codebook_dim, args.tau, args.num_features, args.seed
        )["p_max_median"]
        tau = temperature_for_p_max(target, args.codebook_size, args.codebook_dim, args.num_features, args.seed)
        print(
            f"to match {args.match_codebook_size} x {args.match_codebook_dim}-d at tau {args.tau:g} (median p_max "
            f"{target:.3f}): tau {tau:.3f} for {args.codebook_size} x {args.codebook_dim}-d"
        )


if __name__ == "__main__":
    main()
