import pytest
import torch
import torch.nn.functional as F

from prologue_hf.models import L2VectorQuantizer, ProbSTEQuantizer
from prologue_hf.models.quantizers import straight_through_onehot


def _features(seed=0, batch=2, length=5, dim=12):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, length, dim, generator=g, requires_grad=True)


def test_l2_vq_ids_codes_and_loss_values():
    torch.manual_seed(0)
    vq = L2VectorQuantizer(dim=12, z_dim=4, codebook_size=7, commitment_beta=0.25)
    h = _features()
    out = vq(h)
    z = F.normalize(vq.proj_in(h), dim=-1)
    codebook = F.normalize(vq.embedding.weight, dim=-1)
    expected_ids = (z @ codebook.t()).argmax(-1)
    assert out.ids.shape == (2, 5) and out.ids.dtype == torch.long
    assert torch.equal(out.ids, expected_ids)
    assert int(out.ids.min()) >= 0 and int(out.ids.max()) < 7
    # forward value of the STE output is the normalised code, and equals a lookup of the ids
    torch.testing.assert_close(out.quantized, codebook[expected_ids], atol=1e-6, rtol=0)
    torch.testing.assert_close(vq.lookup(out.ids), codebook[expected_ids])
    mse = F.mse_loss(codebook[expected_ids], z)
    torch.testing.assert_close(out.loss, 1.25 * mse)


def test_l2_vq_straight_through_gradient_is_identity():
    torch.manual_seed(0)
    vq = L2VectorQuantizer(12, 4, 7)
    out = vq(_features())
    upstream = torch.randn_like(out.quantized)
    (grad_q,) = torch.autograd.grad((out.quantized * upstream).sum(), out.normalized_features, retain_graph=True)
    torch.testing.assert_close(grad_q, upstream)
    # codebook gets gradient only from the VQ loss, not through the straight-through path
    (grad_cb,) = torch.autograd.grad((out.quantized * upstream).sum(), vq.embedding.weight, allow_unused=True)
    assert grad_cb is None or torch.count_nonzero(grad_cb) == 0


def test_prob_ste_forward_is_hard_one_hot():
    torch.manual_seed(0)
    q = ProbSTEQuantizer(12, 4, 9, temperature=0.1)
    out = q(_features())
    hard = F.one_hot(out.ids, 9).float()
    assert torch.equal(out.soft_onehot, hard) or torch.allclose(out.soft_onehot, hard, atol=1e-7)
    torch.testing.assert_close(out.quantized, q.normalized_codebook()[out.ids], atol=1e-6, rtol=0)
    assert out.loss.item() == 0.0


def test_prob_ste_gradient_is_the_softmax_jacobian():
    torch.manual_seed(0)
    tau = 0.1
    q = ProbSTEQuantizer(12, 4, 9, temperature=tau)
    out = q(_features())
    upstream = torch.randn_like(out.soft_onehot)
    (grad_logits,) = torch.autograd.grad((out.soft_onehot * upstream).sum(), out.logits)
    p = torch.softmax(out.logits.detach() / tau, dim=-1)
    # d(sum_i u_i p_i)/d l_j = p_j (u_j - sum_i u_i p_i) / tau
    expected = p * (upstream - (upstream * p).sum(-1, keepdim=True)) / tau
    torch.testing.assert_close(grad_logits, expected, atol=1e-5, rtol=1e-4)


def test_prob_ste_temperature_does_not_change_ids():
    torch.manual_seed(0)
    q = ProbSTEQuantizer(12, 4, 9, temperature=0.1)
    h = _features()
    ids = q(h).ids
    q.temperature = 5.0
    assert torch.equal(q(h).ids, ids)


def test_lookup_rejects_out_of_range_ids():
    q = L2VectorQuantizer(12, 4, 7)
    try:
        q.lookup(torch.tensor([[0, 7]]))
    except ValueError as err:
        assert "[0, 7)" in str(err)
    else:
        raise AssertionError("expected ValueError")


def test_straight_through_onehot_forward_is_hard_gradient_is_the_softmax():
    tau = 0.5
    logits = torch.randn(3, 5, 7, generator=torch.Generator().manual_seed(1), requires_grad=True)
    soft = straight_through_onehot(logits, tau)
    assert soft.dtype == torch.float32 and soft.shape == (3, 5, 7)
    assert torch.equal(soft.detach(), F.one_hot(logits.argmax(-1), 7).float())  # exactly the hard one-hot
    upstream = torch.randn(3, 5, 7, generator=torch.Generator().manual_seed(2))
    (grad,) = torch.autograd.grad((soft * upstream).sum(), logits)
    p = torch.softmax(logits.detach() / tau, -1)
    torch.testing.assert_close(grad, p * (upstream - (upstream * p).sum(-1, keepdim=True)) / tau, rtol=1e-5, atol=1e-6)
    # bf16 logits: float32 probabilities, the same ids
    assert torch.equal(straight_through_onehot(logits.detach().bfloat16(), tau).argmax(-1), logits.argmax(-1))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        straight_through_onehot(logits, 0.0)


def test_prob_ste_quantizer_uses_the_straight_through_helper():
    torch.manual_seed(0)
    q = ProbSTEQuantizer(12, 4, 9, temperature=0.1)
    out = q(_features())
    assert torch.equal(out.soft_onehot, straight_through_onehot(out.logits, 0.1))
