"""FlowModule's last word before an optimizer step, called directly: which clip value and algorithm apply, where
Lightning's own clipping takes over (clipping by value, fp16 loss scaling), and the NaN/Inf guard (what it decides
on, how it counts, when it stops, and that a skipped step stays skipped for the EMA)."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from lightning.pytorch.plugins.precision import MixedPrecision, Precision

from lightning_mf.lit.base import FlowModule
from lightning_mf.models import TowerConfig

TOWER = TowerConfig(dim=32, depth=1, heads=2, vocab_size=32)  # audio tokens (32 values) fit this tower
NAN_WARNING = r"NaN/Inf gradients, step skipped"


def _module(precision: Precision | None = None, global_step: int = 0, **kwargs: Any) -> tuple[FlowModule, list[tuple]]:
    """A FlowModule under a stand-in Trainer (what the clipping code reads of it); returns it and its log calls."""
    module = FlowModule(("audio",), tower=TOWER, **kwargs)
    module._trainer = SimpleNamespace(
        precision_plugin=precision or Precision(), gradient_clip_val=None, gradient_clip_algorithm=None, global_step=global_step
    )
    logged: list[tuple] = []
    module.log = lambda name, value, **flags: logged.append((name, value, flags))  # type: ignore[method-assign]
    return module, logged


def _optimizer(*grads: list[float]) -> torch.optim.Optimizer:
    """Plain SGD over one parameter per gradient given (None: a parameter that got no gradient)."""
    params = []
    for grad in grads:
        p = torch.nn.Parameter(torch.zeros(len(grad) if grad is not None else 2))
        p.grad = torch.tensor(grad) if grad is not None else None
        params.append(p)
    return torch.optim.SGD(params, lr=1.0)


def _grads(optimizer: torch.optim.Optimizer) -> list[float | None]:
    """Every gradient value, parameter after parameter (None for a parameter without a gradient)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    return [v for p in params for v in ([None] if p.grad is None else p.grad.tolist())]


def test_the_trainers_clip_value_wins_over_grad_clip_which_is_the_default() -> None:
    """``gradient_clip_val`` (what Lightning passes from ``Trainer(gradient_clip_val=...)``) is the norm clipped to when
    given; otherwise ``model.grad_clip`` is; with neither, nothing is clipped. Gradient norm 5 in both cases."""
    module, _ = _module(grad_clip=1.0)
    optimizer = _optimizer([3.0, 0.0], [4.0])
    module.configure_gradient_clipping(optimizer)
    assert _grads(optimizer) == pytest.approx([0.6, 0.0, 0.8])  # norm 1 = grad_clip
    optimizer = _optimizer([3.0, 0.0], [4.0])
    module.configure_gradient_clipping(optimizer, gradient_clip_val=0.5)
    assert _grads(optimizer) == pytest.approx([0.3, 0.0, 0.4])  # norm 0.5 = the Trainer's value, not grad_clip
    module, _ = _module(grad_clip=None)
    optimizer = _optimizer([3.0, 0.0], [4.0])
    module.configure_gradient_clipping(optimizer)
    assert _grads(optimizer) == [3.0, 0.0, 4.0]
    module.configure_gradient_clipping(optimizer, gradient_clip_val=0.5)
    assert _grads(optimizer) == pytest.approx([0.3, 0.0, 0.4])
    assert not module._skipped_step


def test_clipping_by_value_clips_each_element_at_the_value_that_applies() -> None:
    """``gradient_clip_algorithm="value"`` goes to Lightning's clipping with that algorithm and the value in effect
    (the Trainer's, else grad_clip): each element is clamped, not the norm scaled."""
    module, _ = _module(grad_clip=1.0)
    optimizer = _optimizer([3.0, -4.0, 0.2])
    module.configure_gradient_clipping(optimizer, gradient_clip_val=0.5, gradient_clip_algorithm="value")
    assert _grads(optimizer) == pytest.approx([0.5, -0.5, 0.2])
    optimizer = _optimizer([3.0, -4.0, 0.2])
    module.configure_gradient_clipping(optimizer, gradient_clip_algorithm="value")
    assert _grads(optimizer) == pytest.approx([1.0, -1.0, 0.2])
    assert not module._skipped_step


def test_under_fp16_loss_scaling_lightning_clips_and_the_grad_scaler_handles_overflow() -> None:
    """With a GradScaler the guard stays out: finite gradients are norm-clipped by Lightning's clipping, and NaN/Inf
    ones (an overflow the scaler skips and answers by lowering its scale) are neither dropped nor counted."""
    scaled = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))
    module, logged = _module(scaled, grad_clip=1.0)
    optimizer = _optimizer([3.0, 0.0], [4.0])
    module.configure_gradient_clipping(optimizer)
    assert _grads(optimizer) == pytest.approx([0.6, 0.0, 0.8])
    optimizer = _optimizer([math.inf, 1.0])
    module.configure_gradient_clipping(optimizer)
    assert all(p.grad is not None for p in optimizer.param_groups[0]["params"])  # left for the scaler to see
    assert module.nonfinite_steps == 0 and not module._skipped_step and logged == []


def test_a_nan_in_one_optimizer_keeps_the_whole_step_skipped_for_the_ema() -> None:
    """A stage with two optimizers calls the guard for each: a later finite one must not un-skip the step, so the
    EMA does not average in weights of a step that was dropped; a step whose optimizers are all finite updates it."""
    module, _ = _module()
    with torch.no_grad():
        next(module.net.parameters()).add_(1.0)  # the EMA differs from the weights: an update would move it
    ema = [p.clone() for p in module.ema.parameters()]
    for order in (([math.nan, 1.0], [1.0, 2.0]), ([1.0, 2.0], [math.nan, 1.0])):
        module._skipped_step = False  # as at the start of every training batch
        with pytest.warns(UserWarning, match=NAN_WARNING):
            for grads in order:
                module.configure_gradient_clipping(_optimizer(grads))
        assert module._skipped_step
        module.after_optimizer_step()
        assert module.ema_updates == 0 and all(torch.equal(a, b) for a, b in zip(ema, module.ema.parameters()))
    module._skipped_step = False
    for grads in ([1.0, 2.0], [3.0, 4.0]):
        module.configure_gradient_clipping(_optimizer(grads))
    module.after_optimizer_step()
    assert module.ema_updates == 1 and any(not torch.equal(a, b) for a, b in zip(ema, module.ema.parameters()))


def test_an_optimizer_without_gradients_is_not_a_nan_step() -> None:
    """An optimizer none of whose parameters got a gradient this step (no loss reached them) has nothing to clip: the
    step is not skipped or counted."""
    module, logged = _module()
    optimizer = _optimizer(None, None)
    assert module.clip_or_skip(optimizer, 1.0) is True
    module.configure_gradient_clipping(optimizer)
    assert not module._skipped_step and module.nonfinite_steps == 0 and logged == []


class _ShardedNorm(torch.Tensor):
    """A gradient norm as FSDP2 returns it: this rank's part is finite, the all-reduced ``full_tensor()`` is not."""

    def full_tensor(self) -> torch.Tensor:
        return torch.tensor(math.nan)


def test_the_nan_decision_uses_the_all_reduced_norm_of_sharded_gradients(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under FSDP2 every rank must decide alike from the full norm: a NaN in another rank's shard skips this rank's
    step too, although its own shard is finite."""
    monkeypatch.setattr(torch.nn.utils, "get_total_norm", lambda grads: torch.tensor(1.0).as_subclass(_ShardedNorm))
    module, _ = _module()
    optimizer = _optimizer([1.0, 2.0])
    with pytest.warns(UserWarning, match=NAN_WARNING):
        assert module.clip_or_skip(optimizer, None) is False
    assert _grads(optimizer) == [None] and module.nonfinite_steps == 1


def test_the_nan_guard_drops_counts_logs_and_stops_after_the_limit() -> None:
    """Each NaN/Inf step drops every gradient, adds one to the count, logs the count as a step value and warns; the
    step that takes the count past ``max_nonfinite_steps`` stops the run with a message naming the option; no limit
    never stops."""
    module, logged = _module(global_step=7, max_nonfinite_steps=2)
    for n, bad in enumerate((math.nan, math.inf), start=1):
        optimizer = _optimizer([bad, 1.0], [2.0])
        with pytest.warns(UserWarning, match=rf"^step 7: NaN/Inf gradients, step skipped \({n} so far\)$"):
            assert module.clip_or_skip(optimizer, 1.0) is False
        assert _grads(optimizer) == [None, None] and module.nonfinite_steps == n
        assert logged[-1] == ("train/nonfinite_steps", float(n), {"on_step": True, "on_epoch": False})
    message = (
        r"^3 optimizer steps had NaN/Inf gradients \(the last at step 7\), more than model.max_nonfinite_steps=2: "
        r"stopping. Lower the learning rate, check the data, or raise the limit$"
    )
    with pytest.raises(RuntimeError, match=message):
        module.clip_or_skip(_optimizer([math.nan]), 1.0)
    module, logged = _module(max_nonfinite_steps=None)
    with pytest.warns(UserWarning, match=NAN_WARNING):
        for _ in range(5):
            assert module.clip_or_skip(_optimizer([math.nan]), 1.0) is False
    assert module.nonfinite_steps == 5 and [value for _, value, _ in logged] == [1.0, 2.0, 3.0, 4.0, 5.0]
