"""`make demo`: the whole Prologue recipe on the embedded Fashion-MNIST subset, offline, in minutes on a CPU.

    python examples/demo.py --output-dir demo_out           # the default (a few minutes on 2 cores)
    python examples/demo.py --output-dir demo_full --full   # the longer replication-scale run

Writes samples.png, reconstructions.png, loss_curves.png, report.md / report.json and a ProloguePipeline folder.
"""

import argparse
import dataclasses
import json

from prologue_hf.research.demo import DemoConfig, run_demo


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="demo_out")
    parser.add_argument("--full", action="store_true", help="the longer replication-scale configuration")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="override DemoConfig fields (JSON values)")
    args = parser.parse_args(argv)
    known = {f.name for f in dataclasses.fields(DemoConfig)}
    overrides = {"output_dir": args.output_dir}
    for item in args.set:
        name, _, value = item.partition("=")
        if name not in known:
            parser.error(f"unknown DemoConfig field {name!r}; known: {sorted(known)}")
        overrides[name] = json.loads(value) if value[:1] in "[{0123456789-tf" else value
    config = DemoConfig.full(**overrides) if args.full else DemoConfig(**overrides)
    report = run_demo(config)
    print(open(f"{config.output_dir}/report.md").read())
    return report


if __name__ == "__main__":
    main()
