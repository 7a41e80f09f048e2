"""The fused head + cross-entropy fast path of stage 2 (``prologue_ar_loss_from_hidden``) against the plain path
(``prologue_ar_loss`` on ``F.linear`` logits): values, statistics, gradients, fp32 and bf16 autocast, and whole
``PrologueARTrainer`` runs with the fast path on and off."""

import pytest
import torch
import torch.nn.functional as F

from prologue_hf import PrologueVocabulary
from prologue_hf.testing import random_pretokenized_dataset, tiny_ar, tiny_tokenizer
from prologue_hf.training.losses import prologue_ar_loss, prologue_ar_loss_from_hidden
from prologue_hf.training.pretokenize import PretokenizedInfo
from prologue_hf.training.trainer_ar import PrologueARTrainer, PrologueARTrainingArguments

pytestmark = pytest.mark.usefixtures("one_thread")

WEIGHTS = (2.0, 0.5, 1.0)  # distinct per segment, so the weighting is checked too


def _problem(seed: int = 0, batch: int = 3, hidden: int = 24):
    """Hidden states, head weight and a valid id sequence for a small vocabulary (K = 3, N = 7)."""
    vocab = PrologueVocabulary(visual_vocab_size=40, prologue_vocab_size=9, num_prologue_tokens=3,
                               num_visual_tokens=7, num_classes=5)  # fmt: skip
    g = torch.Generator().manual_seed(seed)
    ids = vocab.build_sequence(
        torch.randint(0, 6, (batch,), generator=g),  # 5 = the null class
        torch.randint(0, 40, (batch, 7), generator=g),
        torch.randint(0, 9, (batch, 3), generator=g),
    )
    states = torch.randn(batch, ids.shape[1], hidden, generator=g)
    weight = torch.randn(vocab.vocab_size, hidden, generator=g) * 0.5
    states[:, :-1:2] += 2 * weight[ids[:, 1::2]]  # every other position leans to its target: some top-1 hits
    return vocab, ids, states, weight


def _run(fused: bool, vocab, ids, states, weight, autocast: bool, chunk_rows: int = 4):
    hidden = states.clone().requires_grad_()
    head = weight.clone().requires_grad_()
    with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
        if fused:
            out = prologue_ar_loss_from_hidden(hidden, head, ids, vocab, WEIGHTS, chunk_rows=chunk_rows)
        else:
            out = prologue_ar_loss(F.linear(hidden, head), ids, vocab, WEIGHTS)
    out.loss.backward()
    return out, hidden.grad, head.grad


@pytest.mark.parametrize("chunk_rows", [1, 4, 1000])
def test_fused_matches_plain_fp32(chunk_rows):
    vocab, ids, states, weight = _problem()
    plain, plain_dh, plain_dw = _run(False, vocab, ids, states, weight, autocast=False)
    fused, fused_dh, fused_dw = _run(True, vocab, ids, states, weight, autocast=False, chunk_rows=chunk_rows)
    torch.testing.assert_close(fused.loss, plain.loss, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(fused.token_loss, plain.token_loss, rtol=1e-5, atol=1e-5)
    assert torch.equal(fused.correct, plain.correct) and 0 < int(plain.correct.sum()) < plain.correct.numel()
    torch.testing.assert_close(fused.segment_stats, plain.segment_stats, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fused_dh, plain_dh, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(fused_dw, plain_dw, rtol=1e-5, atol=1e-7)
    assert fused_dh[:, -1].abs().max() == 0  # the last position predicts nothing: no gradient, as the plain path
    assert plain_dh.abs().max() > 0 and plain_dw.abs().max() > 0


def test_fused_matches_plain_bf16_autocast():
    vocab, ids, states, weight = _problem(seed=1)
    plain, plain_dh, plain_dw = _run(False, vocab, ids, states, weight, autocast=True)
    fused, fused_dh, fused_dw = _run(True, vocab, ids, states, weight, autocast=True)
    # same bf16 products and float32 CE: equal to float rounding (the gradients round to bf16 once more)
    torch.testing.assert_close(fused.loss, plain.loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fused.token_loss, plain.token_loss, rtol=1e-4, atol=1e-4)
    assert torch.equal(fused.correct, plain.correct)
    assert fused_dh.dtype == fused_dw.dtype == torch.float32
    torch.testing.assert_close(fused_dh, plain_dh, rtol=2e-2, atol=1e-4)
    torch.testing.assert_close(fused_dw, plain_dw, rtol=2e-2, atol=1e-4)
    # and the bf16 path differs from fp32 by more than that: autocast really ran the products in bf16
    fp32, _, _ = _run(True, vocab, ids, states, weight, autocast=False)
    assert not torch.equal(fp32.token_loss, fused.token_loss)


def test_fused_backward_runs_once_and_checks_shapes():
    vocab, ids, states, weight = _problem()
    hidden = states.clone().requires_grad_()
    out = prologue_ar_loss_from_hidden(hidden, weight, ids, vocab)
    out.loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward runs once"):
        out.loss.backward()
    with pytest.raises(ValueError, match="hidden_states must have shape"):
        prologue_ar_loss_from_hidden(states[:, :-1], weight, ids, vocab)
    with pytest.raises(ValueError, match="head_weight must have shape"):
        prologue_ar_loss_from_hidden(states, weight[:, :-1], ids, vocab)
    with pytest.raises(ValueError, match="input_ids must have shape"):
        prologue_ar_loss_from_hidden(states[:, :-1], weight, ids[:, :-1], vocab)
    with pytest.raises(ValueError, match="chunk_rows"):
        prologue_ar_loss_from_hidden(states, weight, ids, vocab, chunk_rows=0)


def _ids_dataset(rows: int = 32):
    tokenizer = tiny_tokenizer(seed=0)
    info = PretokenizedInfo.from_tokenizer(tokenizer, num_classes=10, num_images=rows)
    return random_pretokenized_dataset(info, rows).with_format("numpy", dtype=None)


@pytest.mark.parametrize("bf16", [False, True])
def test_trainer_fused_head_loss_trains_like_plain(tmp_path, bf16):
    dataset = _ids_dataset()
    runs = {}
    for fused in (False, True):
        args = PrologueARTrainingArguments(
            str(tmp_path / f"fused{fused}"), per_device_train_batch_size=8, max_steps=4, learning_rate=1e-3,
            warmup_steps=1, logging_steps=1, save_strategy="no", use_cpu=True, seed=0, disable_tqdm=True,
            bf16=bf16, fused_head_loss=fused, prologue_loss_weight=2.0,
        )  # fmt: skip
        model = tiny_ar(seed=0, hidden_dropout=0.1, embedding_dropout=0.1)
        trainer = PrologueARTrainer(model, args, train_dataset=dataset)
        calls, dtypes = [], set()
        if fused:  # the fast path really runs: the head module itself is never called
            model.lm_head.register_forward_hook(lambda *a, calls=calls: calls.append(1))
        # and under the same mixed precision as the plain path (accelerate's autocast of the model's forward)
        model.model.layers[0].mlp.down_proj.register_forward_hook(lambda m, i, out, seen=dtypes: seen.add(out.dtype))
        trainer.train()
        assert not calls and dtypes == {torch.bfloat16 if bf16 else torch.float32}
        logs = [h for h in trainer.state.log_history if "loss" in h]
        runs[fused] = (logs, {k: v.detach().clone() for k, v in model.state_dict().items()})
    (plain_logs, plain_weights), (fused_logs, fused_weights) = runs[False], runs[True]
    tol = dict(rtol=2e-2, atol=2e-3) if bf16 else dict(rtol=1e-5, atol=1e-6)
    assert len(plain_logs) == len(fused_logs) == 4
    for a, b in zip(plain_logs, fused_logs):
        for key in ("loss", "loss_prologue", "loss_visual", "accuracy", "grad_norm"):
            torch.testing.assert_close(torch.tensor(b[key]), torch.tensor(a[key]), **tol)
    # bf16: Adam normalises each gradient element, so where one is near zero the two roundings can move its weight
    # by up to the learning rate per step in different directions (4 steps at 1e-3)
    weight_tol = dict(rtol=2e-2, atol=4e-3) if bf16 else tol
    for name, value in plain_weights.items():
        torch.testing.assert_close(fused_weights[name], value, **weight_tol)
