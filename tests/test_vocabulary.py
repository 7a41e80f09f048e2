import pytest
import torch

from prologue_hf import PrologueVocabulary


@pytest.fixture
def vocab():
    return PrologueVocabulary(visual_vocab_size=64, prologue_vocab_size=16, num_prologue_tokens=4, num_visual_tokens=16, num_classes=10)


def test_official_order_of_the_first_ids(vocab):
    # official: visual [0, V), prologue [V, V+P), EOS = V+P (the fixture's 64 / 80)
    assert vocab.prologue_offset == 64
    assert vocab.eos_token_id == 80
    assert vocab.class_offset == 81
    assert vocab.null_class_id == 91
    assert vocab.vocab_size == 92
    assert vocab.num_generated_tokens == 21 and vocab.sequence_length == 22


def test_build_and_split_sequence(vocab):
    visual = torch.arange(32).reshape(2, 16) % 64
    prologue = torch.tensor([[0, 1, 2, 15], [3, 3, 3, 3]])
    seq = vocab.build_sequence(torch.tensor([3, 10]), visual, prologue)
    assert seq.shape == (2, 22)
    assert seq[:, 0].tolist() == [84, 91]
    assert seq[0, 1:5].tolist() == [64, 65, 66, 79]
    assert seq[:, 5].tolist() == [80, 80]
    assert torch.equal(seq[:, 6:], visual)
    p, v = vocab.split(seq)
    assert torch.equal(p, prologue) and torch.equal(v, visual)
    p2, v2 = vocab.split(seq[:, 1:])
    assert torch.equal(p2, prologue) and torch.equal(v2, visual)


def test_masks(vocab):
    allowed = vocab.allowed_tokens()
    assert allowed.shape == (21, 92)
    assert allowed[0].nonzero().flatten().tolist() == list(range(64, 80))
    assert allowed[4].nonzero().flatten().tolist() == [80]
    assert allowed[5].nonzero().flatten().tolist() == list(range(64))
    mask = vocab.logit_mask()
    assert torch.isinf(mask[~allowed]).all() and (mask[allowed] == 0).all()
    assert vocab.segment_ids().tolist() == [0] * 4 + [1] + [2] * 16


@pytest.mark.parametrize("num_prologue_tokens", [4, 0])
def test_step_id_ranges_cover_exactly_the_allowed_ids(num_prologue_tokens):
    vocab = PrologueVocabulary(64, 16, num_prologue_tokens, 16, 10)
    ranges = vocab.step_id_ranges()
    assert len(ranges) == vocab.num_generated_tokens
    for row, (lo, hi) in zip(vocab.allowed_tokens(), ranges):
        assert row.nonzero().flatten().tolist() == list(range(lo, hi))
    if num_prologue_tokens:
        assert ranges[:5] == [(64, 80)] * 4 + [(80, 81)] and ranges[5] == (0, 64)


def test_without_prologue():
    vocab = PrologueVocabulary(64, 16, 0, 16, 10)
    assert vocab.eos_token_id is None and vocab.class_offset == 64 and vocab.vocab_size == 75
    seq = vocab.build_sequence([1], torch.zeros(1, 16, dtype=torch.long))
    assert seq.shape == (1, 17) and seq[0, 0] == 65
    assert vocab.allowed_tokens()[0].nonzero().flatten().tolist() == list(range(64))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(class_labels=[11, 0]), r"class_labels must lie in \[0, 10\)"),
        (dict(visual_ids=torch.full((2, 16), 64)), r"visual_ids must lie in \[0, 64\)"),
        (dict(visual_ids=torch.zeros(2, 15, dtype=torch.long)), r"visual_ids must have shape \[B, 16\]"),
        (dict(prologue_ids=torch.full((2, 4), 16)), r"prologue_ids must lie in \[0, 16\)"),
        (dict(prologue_ids=None), "prologue_ids .* is required"),
        (dict(prologue_ids=torch.zeros(2, 3, dtype=torch.long)), r"prologue_ids must have shape \[B, 4\]"),
    ],
)
def test_bad_input(vocab, kwargs, match):
    args = dict(class_labels=[0, 1], visual_ids=torch.zeros(2, 16, dtype=torch.long), prologue_ids=torch.zeros(2, 4, dtype=torch.long))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        vocab.build_sequence(**args)
