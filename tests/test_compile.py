"""``TrainingArguments(torch_compile=True)`` works for the three trainers and trains like eager (issue 19).

The trainers are the ones ``benchmarks/bench_training.py`` times, at its tiny size. The parametrised test compiles
with ``aot_eager`` (Dynamo's capture of our models and AOTAutograd's joint forward/backward graphs, the eager
kernels): the updates must equal eager's up to float reassociation. Inductor's C++ code generation takes minutes
per trainer on a 2-core CPU, so it runs for the stage-2 trainer only, with ``fallback_random`` (inductor otherwise
draws dropout masks from its own generator, a different but equally valid stream).
"""

from argparse import Namespace

import pytest
import torch
from torch._dynamo.eval_frame import OptimizedModule

pytestmark = pytest.mark.usefixtures("one_thread")  # shared CPUs: see conftest.one_thread


def _train(bench, name, workdir, compile_, backend="aot_eager"):
    args = Namespace(size="tiny", batch_size=2, warmup=0, steps=3, dtype="fp32", compile=compile_,
                     compile_backend=backend, threads=0)  # fmt: skip
    trainer, _ = bench.BUILDERS[name](args, str(workdir))
    start = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    output = trainer.train()
    end = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    return trainer, output.training_loss, start, end


def _assert_same_training(eager, compiled, rtol, atol):
    (_, loss_e, start_e, end_e), (trainer_c, loss_c, start_c, end_c) = eager, compiled
    assert isinstance(trainer_c.model_wrapped, OptimizedModule)  # the Trainer really ran the compiled module
    assert trainer_c.state.global_step == 3
    assert loss_c == pytest.approx(loss_e, rel=rtol)
    assert start_e.keys() == end_c.keys()
    for name in start_e:
        torch.testing.assert_close(start_c[name], start_e[name], rtol=0, atol=0)  # same initial weights
        torch.testing.assert_close(end_c[name], end_e[name], rtol=rtol, atol=atol, msg=name)
    assert sum(not torch.equal(end_e[n], start_e[n]) for n in start_e) > len(start_e) // 2  # the steps trained


@pytest.mark.parametrize("name", ["stage1", "stage2", "post"])
def test_compiled_steps_match_eager(load_example, tmp_path, name):
    bench = load_example("bench_training", folder="benchmarks")
    eager = _train(bench, name, tmp_path / "eager", "off")
    compiled = _train(bench, name, tmp_path / "compiled", "on")
    _assert_same_training(eager, compiled, rtol=1e-5, atol=1e-6)


def test_inductor_stage2_steps_match_eager(load_example, tmp_path, monkeypatch):
    import torch._inductor.config as inductor_config

    monkeypatch.setattr(inductor_config, "fallback_random", True)  # dropout masks from torch's generator, as eager
    bench = load_example("bench_training", folder="benchmarks")
    eager = _train(bench, "stage2", tmp_path / "eager", "off")
    compiled = _train(bench, "stage2", tmp_path / "compiled", "on", backend="inductor")
    _assert_same_training(eager, compiled, rtol=1e-4, atol=1e-5)
