"""PaperSGD follows the paper's update rule; it matches torch.optim.SGD exactly where the two rules coincide."""

from __future__ import annotations

import io

import pytest
import torch

from alexserve.config import OptimConfig
from alexserve.train.optimizer import PaperSGD
from helpers.tensors import context

LR, MOMENTUM, WD = 0.01, 0.9, 5e-4


def _grad_of(w: torch.Tensor, step: int) -> torch.Tensor:
    """A gradient that depends on the weights and the step, so a wrong rule cannot hide behind a constant."""
    return torch.sin(w * (step + 1)) + 0.1 * step


def _run(opt_factory, w0: torch.Tensor, lrs: list[float]) -> torch.Tensor:
    w = torch.nn.Parameter(w0.clone())
    opt = opt_factory([w])
    for step, lr in enumerate(lrs):
        for group in opt.param_groups:
            group["lr"] = lr
        w.grad = _grad_of(w.detach(), step)
        opt.step()
    return w.detach()


def test_matches_the_papers_rule_computed_by_hand():
    # float64 and scalars written out term by term, exactly the formula of section 5.
    w0 = torch.tensor([0.5, -1.25, 2.0], dtype=torch.float64)
    w, v = w0.clone(), torch.zeros_like(w0)
    for step in range(4):
        g = _grad_of(w, step)
        v = MOMENTUM * v - WD * LR * w - LR * g
        w = w + v
    got = _run(lambda p: PaperSGD(p, lr=LR, momentum=MOMENTUM, weight_decay=WD), w0, [LR] * 4)
    torch.testing.assert_close(got, w, rtol=0, atol=1e-15, msg=context("PaperSGD against the rule by hand"))


def test_first_step_from_hand_numbers():
    # v0 = 0: w1 = w0 - wd*lr*w0 - lr*g, with numbers small enough to check on paper.
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    opt = PaperSGD([w], lr=0.1, momentum=0.9, weight_decay=0.5)
    w.grad = torch.tensor([1.0, 1.0], dtype=torch.float64)
    opt.step()
    # 1 - 0.5*0.1*1 - 0.1*1 = 0.85 ; -2 - 0.5*0.1*(-2) - 0.1 = -2.0
    torch.testing.assert_close(
        w.detach(), torch.tensor([0.85, -2.0], dtype=torch.float64), msg=context("weights after the first step")
    )
    w.grad = torch.tensor([0.0, 0.0], dtype=torch.float64)
    opt.step()
    # v1 = (-0.15, 0.0); v2 = 0.9*v1 - 0.05*w1 = (-0.135 - 0.0425, 0.1) ; w2 = (0.6725, -1.9)
    torch.testing.assert_close(
        w.detach(), torch.tensor([0.6725, -1.9], dtype=torch.float64), msg=context("weights after the second step")
    )


def test_agrees_with_torch_sgd_at_constant_lr():
    # Same weights sequence when lr is constant (v = -lr * torch's buffer); only rounding differs.
    w0 = torch.randn(50, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    lrs = [LR] * 20
    ours = _run(lambda p: PaperSGD(p, lr=LR, momentum=MOMENTUM, weight_decay=WD), w0, lrs)
    torchs = _run(lambda p: torch.optim.SGD(p, lr=LR, momentum=MOMENTUM, weight_decay=WD), w0, lrs)
    torch.testing.assert_close(ours, torchs, rtol=1e-12, atol=1e-14, msg=context("PaperSGD against torch.optim.SGD"))


def test_differs_from_torch_sgd_after_an_lr_change_as_documented():
    # The documented departure: after lr /= 10, our buffer still carries the old, larger steps.
    w0 = torch.randn(50, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    lrs = [LR] * 5 + [LR / 10] * 5
    ours = _run(lambda p: PaperSGD(p, lr=LR, momentum=MOMENTUM, weight_decay=WD), w0, lrs)
    torchs = _run(lambda p: torch.optim.SGD(p, lr=LR, momentum=MOMENTUM, weight_decay=WD), w0, lrs)
    assert (ours - torchs).abs().max() > 1e-4
    # ...and still equals the paper's rule by hand.
    w, v = w0.clone(), torch.zeros_like(w0)
    for step, lr in enumerate(lrs):
        v = MOMENTUM * v - WD * lr * w - lr * _grad_of(w, step)
        w = w + v
    torch.testing.assert_close(ours, w, rtol=0, atol=1e-15, msg=context("PaperSGD against the rule by hand"))


def test_weight_decay_applies_to_biases_and_params_without_grad_are_left_alone():
    layer = torch.nn.Linear(3, 2)
    frozen = torch.nn.Parameter(torch.ones(4))
    opt = PaperSGD([*layer.parameters(), frozen], lr=0.1, momentum=0.0, weight_decay=1.0)
    bias0 = layer.bias.detach().clone()
    layer.weight.grad = torch.zeros_like(layer.weight)
    layer.bias.grad = torch.zeros_like(layer.bias)
    opt.step()
    # pure decay: b - 1.0*0.1*b
    torch.testing.assert_close(layer.bias.detach(), bias0 * 0.9, msg=context("bias after a step of pure decay"))
    torch.testing.assert_close(
        frozen.detach(), torch.ones(4), rtol=0, atol=0, msg=context("a parameter without a gradient moved")
    )
    assert frozen not in opt.state


def test_state_dict_round_trip_continues_bit_for_bit():
    # A resume loads the optimizer state through torch.load(weights_only=True).
    def make():
        torch.manual_seed(3)
        model = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3))
        return model, PaperSGD.from_config(model.parameters(), OptimConfig())

    def train(model, opt, steps, start):
        for step in range(start, start + steps):
            x = torch.randn(16, 8, generator=torch.Generator().manual_seed(step))
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()

    model_a, opt_a = make()
    train(model_a, opt_a, 6, 0)

    model_b, opt_b = make()
    train(model_b, opt_b, 3, 0)
    buffer = io.BytesIO()
    torch.save({"model": model_b.state_dict(), "optim": opt_b.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    model_c, opt_c = make()
    model_c.load_state_dict(saved["model"])
    opt_c.load_state_dict(saved["optim"])
    train(model_c, opt_c, 3, 3)
    for (name, a), c in zip(model_a.named_parameters(), model_c.parameters(), strict=True):
        torch.testing.assert_close(c, a, rtol=0, atol=0, msg=context(f"{name} after the resumed steps"))


def test_set_lr_and_config_defaults():
    w = torch.nn.Parameter(torch.zeros(2))
    opt = PaperSGD.from_config([w], OptimConfig())
    assert opt.param_groups[0]["lr"] == 0.01 and opt.param_groups[0]["momentum"] == 0.9
    assert opt.param_groups[0]["weight_decay"] == 5e-4
    opt.set_lr(0.001)
    assert opt.param_groups[0]["lr"] == 0.001
    with pytest.raises(ValueError, match="momentum"):
        PaperSGD([w], lr=0.1, momentum=1.0, weight_decay=0.0)
