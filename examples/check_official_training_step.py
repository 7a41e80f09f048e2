"""Check that prologue-hf's official training mode reproduces an official stage-1 step fixture.

    python examples/check_official_training_step.py --fixture tests/fixtures/official-prologue-stage1-step

Loads ``FIXTURE/start`` (the official stage-1 slots) through the converter in the official training
parameterisation, injects the recorded random draws, runs the recorded iterations (encoder+decoder step, then AR
step) and prints the largest deviation per loss term, for the AR logits and token ids, per module for the gradient
norms and for the weights after each iteration. Every size and setting comes from the folder. Exits 1 on a mismatch
beyond the fixture README's tolerances, 2 when the folder is not a step fixture or uses a setting the official mode
does not implement.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fixture", required=True, help="an official stage-1 step fixture folder")
    args = parser.parse_args(argv)

    from prologue_hf.training.official_parity import replay_official_step_fixture

    try:
        report = replay_official_step_fixture(args.fixture)
    except (FileNotFoundError, NotImplementedError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print("\n".join(report.lines()))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
