"""Stage 2: train the class-conditional Prologue AR on pretokenized ids (paper section 3.1, appendix E).

    accelerate launch examples/train_ar.py --config examples/configs/ar_B-B.yaml \
        --dataset_name_or_path data/imagenet-B-tokens --tokenizer_name_or_path <tokenizer> --output_dir runs/ar-B-B

`--config` is a flat YAML of argument names (examples/configs/ar_*.yaml); flags given after it win. Resume with
`--resume_from_checkpoint latest` (or last / true: the newest complete checkpoint; or a checkpoint folder).
FSDP / DeepSpeed: pass `--config_file examples/accelerate_configs/{fsdp,deepspeed_zero2,deepspeed_zero3}.yaml`
to `accelerate launch`.
"""

from prologue_hf.training.ar_recipe import parse_ar_args, train_ar


def main(argv: list[str] | None = None) -> None:
    script_args, training_args = parse_ar_args(argv)
    train_ar(script_args, training_args)


if __name__ == "__main__":
    main()
