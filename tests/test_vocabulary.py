import pytest
import torch

from prologue_hf.models import PrologueARConfig, PrologueARForCausalLM, PrologueTokenizerModel
from prologue_hf.testing import tiny_ar_config, tiny_tokenizer_config
from prologue_hf.vocabulary import SEGMENTS, PrologueVocabulary, ar_vocabulary_fields, check_compatible


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


# ------------------------------------------------------------------------------ the tokenizer <-> AR contract
def test_segment_positions_and_id_slices_match_the_layout(vocab):
    positions = vocab.segment_positions
    assert positions == {"prologue": slice(0, 4), "eos": slice(4, 5), "visual": slice(5, 21)}
    assert (vocab.prologue_id_slice, vocab.visual_id_slice) == (slice(64, 80), slice(0, 64))
    segments = vocab.segment_ids()
    for index, name in enumerate(SEGMENTS):
        assert (segments[positions[name]] == index).all()
    flat = PrologueVocabulary(64, 16, 0, 16, 10)
    assert flat.segment_positions == {"visual": slice(0, 16)}
    assert flat.prologue_id_slice == slice(64, 64)  # empty: with K = 0 no id is a prologue id
    assert flat.segment_ids().tolist() == [2] * 16


def _vocabulary_sources():
    """The same vocabulary (V=32, P=16, K=4, N=16), described by every kind of tokenizer description."""
    from prologue_hf.testing_post import tiny_post_config, tiny_visual_tokenizer

    post = tiny_post_config(tiny_visual_tokenizer("janus_vqvae"))  # frozen 4x4 grid of 32 codes, K=4 over 16 codes
    tokenizer = tiny_tokenizer_config(visual_codebook_size=32)
    ar = tiny_ar_config(tokenizer, num_classes=7)
    return {"tokenizer": tokenizer, "post": post, "ar": ar, "vocabulary": ar.vocabulary, "model": PrologueTokenizerModel(tokenizer)}


@pytest.mark.parametrize("kind", ["tokenizer", "post", "ar", "vocabulary", "model"])
def test_from_tokenizer_config_reads_every_kind_of_description(kind):
    source = _vocabulary_sources()[kind]
    vocab = PrologueVocabulary.from_tokenizer_config(source, num_classes=3)
    assert vocab == PrologueVocabulary(32, 16, 4, 16, 3)


def test_from_tokenizer_config_reads_a_frozen_vq_adapter():
    from prologue_hf.testing_post import TINY_CODEBOOK_SIZE, tiny_visual_tokenizer

    adapter = tiny_visual_tokenizer("diffusers_vqmodel")
    vocab = PrologueVocabulary.from_tokenizer_config(adapter, num_classes=5)
    assert vocab == PrologueVocabulary(TINY_CODEBOOK_SIZE, 0, 0, adapter.num_tokens, 5)
    assert vocab.eos_token_id is None and vocab.vocab_size == TINY_CODEBOOK_SIZE + 5 + 1
    fields = ar_vocabulary_fields(adapter, 5, hidden_size=64, num_hidden_layers=2, num_attention_heads=4)
    check_compatible(adapter, PrologueARConfig(**fields))


def test_from_tokenizer_config_rejects_what_is_no_tokenizer():
    with pytest.raises(ValueError, match="cannot read a vocabulary from dict.*adapter_for_model"):
        PrologueVocabulary.from_tokenizer_config({"visual_codebook_size": 8}, num_classes=3)
    with pytest.raises(ValueError, match="num_classes must be an integer, got 2.5"):
        PrologueVocabulary.from_tokenizer_config(tiny_tokenizer_config(), num_classes=2.5)
    with pytest.raises(ValueError, match="num_classes must be >= 1, got 0"):
        PrologueVocabulary.from_tokenizer_config(tiny_tokenizer_config(), num_classes=0)


def test_ar_vocabulary_fields_precedence():
    tokenizer = tiny_tokenizer_config()  # V=64, P=16, K=4, N=16
    fields = ar_vocabulary_fields(tokenizer, 10, hidden_size=64, tokenizer_identity="sha256:abc")
    assert fields == dict(visual_vocab_size=64, prologue_vocab_size=16, num_prologue_tokens=4, num_visual_tokens=16,
                          num_classes=10, hidden_size=64, tokenizer_identity="sha256:abc")
    # an override that repeats the tokenizer's value is accepted, one that contradicts it is an error naming both
    assert ar_vocabulary_fields(tokenizer, 10, visual_vocab_size=64, num_visual_tokens=16) == ar_vocabulary_fields(tokenizer, 10)
    for name, wrong, right in [("visual_vocab_size", 32, 64), ("prologue_vocab_size", 8, 16),
                               ("num_prologue_tokens", 3, 4), ("num_visual_tokens", 64, 16)]:
        with pytest.raises(ValueError, match=rf"^{name}={wrong} was passed, but the tokenizer decides {name}={right} "):
            ar_vocabulary_fields(tokenizer, 10, **{name: wrong})
    # num_classes: the argument, else the description's own (an AR config, a pretokenized dataset's info)
    described = tiny_ar_config(tokenizer, num_classes=6)
    assert ar_vocabulary_fields(described)["num_classes"] == 6 and ar_vocabulary_fields(described, 9)["num_classes"] == 9
    with pytest.raises(ValueError, match="num_classes is required"):
        ar_vocabulary_fields(tokenizer)
    # with K = 0 no id is a prologue id: prologue_vocab_size is not the tokenizer's to decide
    flat = tiny_tokenizer_config(num_prologue_tokens=0)
    assert ar_vocabulary_fields(flat, 10, prologue_vocab_size=1)["prologue_vocab_size"] == 1
    assert ar_vocabulary_fields(flat, 10)["prologue_vocab_size"] == flat.prologue_codebook_size


def test_for_tokenizer_is_ar_vocabulary_fields():
    tokenizer = tiny_tokenizer_config(visual_codebook_size=32)
    config = PrologueARConfig.for_tokenizer(tokenizer, 5, hidden_size=64, num_hidden_layers=2, num_attention_heads=4)
    expected = ar_vocabulary_fields(tokenizer, 5)
    assert {name: getattr(config, name) for name in expected} == expected
    assert config.vocabulary == PrologueVocabulary.from_tokenizer_config(tokenizer, 5)
    with pytest.raises(ValueError, match="num_visual_tokens=9 was passed"):
        PrologueARConfig.for_tokenizer(tokenizer, 5, num_visual_tokens=9)


def test_check_compatible_names_every_mismatched_field():
    tokenizer = tiny_tokenizer_config()
    check_compatible(tokenizer, tiny_ar_config(tokenizer))
    check_compatible(tokenizer, PrologueARForCausalLM(tiny_ar_config(tokenizer)))  # a model is read through .config
    other = tiny_ar_config(tiny_tokenizer_config(visual_codebook_size=32, num_prologue_tokens=2, prologue_codebook_size=8))
    with pytest.raises(ValueError) as error:
        check_compatible(tokenizer, other)
    assert str(error.value) == (
        "tokenizer and AR vocabularies do not match (visual_vocab_size: AR 32 vs tokenizer 64; num_prologue_tokens: "
        "AR 2 vs tokenizer 4; prologue_vocab_size: AR 8 vs tokenizer 16); the tokenizer is PrologueTokenizerConfig: "
        "V=64 visual codes, N=16 visual tokens (4x4 grid), K=4 prologue tokens of P=16 codes"
    )
    # with K = 0 the prologue codebook size is not compared
    flat = tiny_tokenizer_config(num_prologue_tokens=0)
    check_compatible(flat, PrologueARConfig(**ar_vocabulary_fields(flat, 3, prologue_vocab_size=1)))
