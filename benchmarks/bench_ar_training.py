"""Stage-2 AR training throughput and peak memory (run by hand; results in docs/benchmarks.md).

Each configuration runs in its own subprocess (so the peak resident memory is that configuration's) through the real
training path: a pretokenized in-memory dataset with random ids -> :class:`PrologueARTrainer` (class dropout, segment
statistics, AdamW, clipping, the LR schedule), ``warmup`` untimed optimizer steps, then ``steps`` timed ones.

Reported per configuration: tokens/s (``batch x (1 + K + 1 + N)`` input tokens per optimizer step, at the median and
the fastest timed step), ms per step,
parameters, and peak memory: on CUDA ``torch.cuda.max_memory_allocated``; on the CPU the process's peak resident set
(``ru_maxrss``: weights, AdamW states, activations, the Python / torch runtime) and its growth over the model-less
baseline measured in the same process before the model is built.

Configurations: ``tiny`` (``prologue_hf.testing.tiny_ar_config``, 2 x 64, vocabulary of the tiny tokenizer) and
``B``/``L``/``XL`` (``PrologueARConfig.from_preset``, the paper's B tokenizer vocabulary: 16384 visual + 1024 prologue,
K=16, N=256, 1000 classes; sequence 274). Example::

    python benchmarks/bench_ar_training.py --configs tiny B --batch-size 8 --steps 3 --json ar_training.json
    python benchmarks/bench_ar_training.py --configs B --batch-size 32 --bf16 --activation-checkpointing   # GPU
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time


def _run_one(args) -> dict:
    import datasets
    import numpy as np
    import torch
    from transformers import TrainerCallback

    from prologue_hf import PrologueARConfig, PrologueARForCausalLM
    from prologue_hf.testing import tiny_ar_config, tiny_tokenizer_config
    from prologue_hf.training.pretokenize import PretokenizedInfo, output_features
    from prologue_hf.training.trainer_ar import PrologueARTrainer, PrologueARTrainingArguments

    if args.threads:
        torch.set_num_threads(args.threads)
    baseline_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if args.config == "tiny":
        config = tiny_ar_config(hidden_dropout=0.1, embedding_dropout=0.1)
        tok = tiny_tokenizer_config()
    else:
        config = PrologueARConfig.from_preset(args.config, hidden_dropout=0.1, embedding_dropout=0.1)
        tok = None
    vocab = config.vocabulary
    info = PretokenizedInfo(
        tokenizer_identity="sha256:benchmark",
        tokenizer_config_hash="benchmark",
        visual_vocab_size=vocab.visual_vocab_size,
        prologue_vocab_size=vocab.prologue_vocab_size,
        num_prologue_tokens=vocab.num_prologue_tokens,
        num_visual_tokens=vocab.num_visual_tokens,
        image_size=tok.image_size if tok else 256,
        num_classes=vocab.num_classes,
    )
    rows = args.batch_size * (args.warmup + args.steps)
    rng = np.random.default_rng(0)
    table = {
        "prologue_ids": list(rng.integers(0, vocab.prologue_vocab_size, (rows, vocab.num_prologue_tokens)).astype(np.int16)),
        "visual_ids": list(rng.integers(0, vocab.visual_vocab_size, (rows, vocab.num_visual_tokens)).astype(np.int16)),
        "label": rng.integers(0, vocab.num_classes, rows).astype(np.int32),
        "crop_index": np.zeros(rows, np.int8),
        "image_index": np.arange(rows),
    }
    dataset = datasets.Dataset.from_dict(table, features=output_features(info))
    dataset.info.description = info.to_json()
    dataset = dataset.with_format("numpy", dtype=None)

    torch.manual_seed(0)
    model = PrologueARForCausalLM(config)
    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.start = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times.append(time.perf_counter() - self.start)

    with tempfile.TemporaryDirectory() as out:
        training = PrologueARTrainingArguments(
            out,
            per_device_train_batch_size=args.batch_size,
            max_steps=args.warmup + args.steps,
            learning_rate=2e-4,
            min_learning_rate=5e-5,
            warmup_steps=1,
            save_strategy="no",
            logging_steps=10**9,
            disable_tqdm=True,
            use_cpu=not torch.cuda.is_available(),
            bf16=args.bf16,
            activation_checkpointing=args.activation_checkpointing,
            dataloader_num_workers=0,
        )
        trainer = PrologueARTrainer(model, training, train_dataset=dataset, callbacks=[Timer()])
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        trainer.train()
    timed = times[args.warmup :]
    tokens_per_step = args.batch_size * vocab.sequence_length
    step_s = statistics.median(timed)  # robust to other processes sharing the machine
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = {
        "config": args.config,
        "parameters_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "sequence_length": vocab.sequence_length,
        "batch_size": args.batch_size,
        "dtype": "bf16 autocast" if args.bf16 else "fp32",
        "activation_checkpointing": args.activation_checkpointing,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu x{torch.get_num_threads()} threads",
        "timed_steps": len(timed),
        "ms_per_step_median": round(1000 * step_s, 1),
        "ms_per_step_min": round(1000 * min(timed), 1),
        "tokens_per_s": round(tokens_per_step / step_s, 1),
        "tokens_per_s_best": round(tokens_per_step / min(timed), 1),
        "step_times_s": [round(t, 3) for t in timed],
    }
    if torch.cuda.is_available():
        result["peak_cuda_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    else:
        result["peak_rss_mib"] = round(peak_kib / 1024, 1)
        result["peak_rss_growth_mib"] = round((peak_kib - baseline_kib) / 1024, 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["tiny", "B"], choices=["tiny", "B", "L", "XL"])
    parser.add_argument("--config", help=argparse.SUPPRESS)  # one configuration, in the child process
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=1, help="untimed optimizer steps first")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--activation-checkpointing", action="store_true")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()
    if args.config:
        print("RESULT " + json.dumps(_run_one(args)), flush=True)
        return
    results = []
    for name in args.configs:
        command = [sys.executable, os.path.abspath(__file__), "--config", name, "--batch-size", str(args.batch_size),
                   "--steps", str(args.steps), "--warmup", str(args.warmup), "--threads", str(args.threads)]  # fmt: skip
        command += ["--bf16"] * args.bf16 + ["--activation-checkpointing"] * args.activation_checkpointing
        out = subprocess.run(command, capture_output=True, text=True, check=True)
        line = next(line for line in out.stdout.splitlines() if line.startswith("RESULT "))
        results.append(json.loads(line[len("RESULT ") :]))
        print(json.dumps(results[-1]), flush=True)
    report = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_1min": os.getloadavg()[0]}}
    report["results"] = results
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=2)


if __name__ == "__main__":
    main()
