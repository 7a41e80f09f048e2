"""Pretokenize an image dataset with a frozen Prologue tokenizer (stage 2 input; paper appendix E, ten-crop).

    accelerate launch examples/pretokenize.py --dataset_name_or_path ILSVRC/imagenet-1k \
        --tokenizer_name_or_path <tokenizer> --output_dir data/imagenet-B-tokens --batch_size 128 --num_workers 8

Sources: an image folder, a `save_to_disk` folder or a Hub dataset (`--streaming` for no full download). Every
process takes its own shards; rerunning the same command resumes (finished shards are skipped). See
docs/training.md, "Stage 2".
"""

from transformers import HfArgumentParser

from prologue_hf.training.pretokenize import PretokenizeConfig, PretokenizeScriptArguments, run_pretokenize


def main(argv: list[str] | None = None) -> None:
    parser = HfArgumentParser((PretokenizeScriptArguments, PretokenizeConfig))
    script_args, config = parser.parse_args_into_dataclasses(args=argv)
    run_pretokenize(script_args, config)


if __name__ == "__main__":
    main()
