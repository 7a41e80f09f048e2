"""Prologue-Post: learn prologue tokens on top of a frozen visual tokenizer (paper section 2.3, Table A1).

    accelerate launch examples/train_prologue_post.py --config examples/configs/post_B.yaml \
        --visual_tokenizer_name_or_path runs/2d-B-tokenizer/tokenizer --output_dir runs/post-B

Only the prologue encoder, the Prob-STE quantizer and the compact AR train (L_AR only); the frozen tokenizer is
any supported VQ model (ours, diffusers VQModel, JanusVQVAE, Emu3VQVAE, ChameleonVQVAE): see docs/prologue_post.md.
post_B.yaml sets training_mode: official (the authors' Post run: a prologue-encoder step with the AR frozen, then an AR
step; OfficialProloguePostTrainer, docs/training.md); --training_mode routed trains both in one joint step.
Then run stage 2 unchanged: examples/pretokenize.py --tokenizer_name_or_path runs/post-B/tokenizer, examples/train_ar.py.
Flags after --config override the YAML; resume with --resume_from_checkpoint last (or latest / true: the newest
complete checkpoint; or a checkpoint folder).
"""

from prologue_hf.training.cli import parse_config_and_args
from prologue_hf.training.trainer_post import POST_ARGUMENT_CLASSES, train_post


def main(argv=None):
    model_args, data_args, loss_config, training_args = parse_config_and_args(POST_ARGUMENT_CLASSES, argv)
    return train_post(model_args, data_args, loss_config, training_args)


if __name__ == "__main__":
    main()
