"""`make app`: the interactive Prologue demo in the browser, served on http://127.0.0.1:7860 only.

    python examples/app.py                                  # the pipeline `make demo` wrote (demo_out/pipeline)
    python examples/app.py --pipeline converted/            # a converted official checkpoint, or any pipeline folder
    python examples/app.py --pipeline user/prologue-B-B     # a Hub id already in the local cache (runs offline)

Pick a class, press Resample all; Resample visual keeps the prologue and redraws the visual tokens; upload an image
for its reconstruction, prologue ids and variations. docs/app.md describes every control. Needs the `demo` extra
(`pip install -e ".[demo]"`). Nothing is fetched from the internet: no share link, no analytics.
"""

import argparse
import os

# before gradio / huggingface_hub are imported: no telemetry or version-check requests leave the machine
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", default="demo_out/pipeline", help="ProloguePipeline folder or cached Hub id")
    parser.add_argument("--port", type=int, default=7860, help="port on 127.0.0.1 (the app binds to nothing else)")
    parser.add_argument("--device", default="auto", help="'auto' (CUDA when present), 'cpu', 'cuda', 'cuda:1', ...")
    args = parser.parse_args(argv)

    from prologue_hf.research.app import build_app, launch_app, load_pipeline

    try:
        pipeline = load_pipeline(args.pipeline, device=args.device)
    except FileNotFoundError as error:
        parser.error(str(error))
    print(f"serving {args.pipeline} on http://127.0.0.1:{args.port} (Ctrl+C stops)", flush=True)
    launch_app(build_app(pipeline, pipeline_name=args.pipeline), port=args.port, block=True)


if __name__ == "__main__":
    main()
