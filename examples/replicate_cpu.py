"""CPU mini-replication: the 2D baseline vs Prologue at equal budget on embedded Fashion-MNIST (docs/results.md).

    python examples/replicate_cpu.py --output_dir /tmp/replication/runs \
        --results docs/figures/replication.json --figure docs/figures/replication.png

Every (variant, seed) run is cached in ``<output_dir>/<variant>/seed<k>/metrics.json``, so a sweep can be split over
processes that share ``--output_dir`` (e.g. ``--seeds 0,1,2`` and ``--seeds 3,4``, or one variant each) and then
aggregated by the full command, which finds every run cached (docs/results.md gives the exact commands).

Ablations (paper appendix D) reuse the same path, e.g. one seed of lambda = 1 and p_drop = 0:

    python examples/replicate_cpu.py --seeds 0 --variants '[{"name": "prologue_k4_lambda1", "num_prologue_tokens": 4,
        "ar_weight": 1.0}]' ...
"""

import argparse
import json
import logging

import torch
from transformers.utils import logging as hf_logging

from prologue_hf.research.replication import ReplicationConfig, run_replication


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="/tmp/replication/runs", help="models, tokens (outside the repo)")
    parser.add_argument("--results", default="replication.json", help="JSON of every number")
    parser.add_argument("--figure", default="replication.png", help="PNG of the bar plots and the CFG sweep")
    parser.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated seeds")
    parser.add_argument("--variants", default=None, help="JSON list of {name, num_prologue_tokens, DemoConfig fields}")
    parser.add_argument("--demo_overrides", default="{}", help="JSON of DemoConfig fields shared by every run")
    parser.add_argument("--fd_images_per_class", type=int, default=30)
    parser.add_argument("--visual_scales", default="1.5,2.0,3.0")
    parser.add_argument("--prologue_scale", type=float, default=0.8)
    parser.add_argument("--probe_tokens", type=int, default=4)
    parser.add_argument("--probe_epochs", type=int, default=90)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: see docs/results.md)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    hf_logging.set_verbosity_info()
    logging.basicConfig(level=logging.INFO)
    config = ReplicationConfig(
        output_dir=args.output_dir,
        seeds=[int(s) for s in args.seeds.split(",")],
        demo_overrides=json.loads(args.demo_overrides),
        fd_images_per_class=args.fd_images_per_class,
        visual_scales=[float(s) for s in args.visual_scales.split(",")],
        prologue_scale=args.prologue_scale,
        probe_tokens=args.probe_tokens,
        probe_epochs=args.probe_epochs,
        **({"variants": json.loads(args.variants)} if args.variants else {}),
    )
    results = run_replication(config, args.results, args.figure)
    print(results["table"])
    print(f"wall time: {results['wall_seconds']:.0f} s")


if __name__ == "__main__":
    main()
