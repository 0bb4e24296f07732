"""Optimizers over trainable parameters only; the per-epoch LR schedule of the prompt configs."""
import math
import warnings

import pytest
import torch
import torch.nn as nn

from dpl.config import get_cfg_default
from dpl.optim import AVAILABLE_OPTIMIZERS, build_lr_scheduler, build_optimizer


def prompt_optim_cfg(max_epoch=5, lr=0.002):
    """OPTIM node of the CoOp/PromptSRC configs: sgd, cosine, 1 constant warmup epoch at 1e-5."""
    cfg = get_cfg_default().OPTIM
    cfg.NAME = "sgd"
    cfg.LR = lr
    cfg.MAX_EPOCH = max_epoch
    cfg.LR_SCHEDULER = "cosine"
    cfg.WARMUP_EPOCH = 1
    cfg.WARMUP_TYPE = "constant"
    cfg.WARMUP_CONS_LR = 1e-5
    return cfg


def epoch_lrs(optimizer, scheduler, num_epochs):
    """The LR each (1-based) epoch trains at, stepping the scheduler once per epoch as trainers do."""
    lrs = []
    for _ in range(num_epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_prompt_config_schedule_matches_the_derived_formula():
    cfg = prompt_optim_cfg(max_epoch=5, lr=0.002)
    model = nn.Linear(3, 2)
    optimizer = build_optimizer(model, cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no deprecated `verbose` warning, no step-order warning
        scheduler = build_lr_scheduler(optimizer, cfg)
        lrs = epoch_lrs(optimizer, scheduler, 5)
    expected = [1e-5] + [0.002 * 0.5 * (1 + math.cos(math.pi * (e - 2) / 5)) for e in range(2, 6)]
    assert lrs == pytest.approx(expected, rel=1e-12)
    assert lrs[-1] > 0  # the successor counts from 0 after warmup: the last epoch does not reach 0


def test_scheduler_state_dict_round_trip_continues_identically():
    cfg = prompt_optim_cfg(max_epoch=6)
    model = nn.Linear(3, 2)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_lr_scheduler(optimizer, cfg)
    epoch_lrs(optimizer, scheduler, 3)
    opt_state, sched_state = optimizer.state_dict(), scheduler.state_dict()
    rest = epoch_lrs(optimizer, scheduler, 3)

    model2 = nn.Linear(3, 2)
    optimizer2 = build_optimizer(model2, cfg)
    scheduler2 = build_lr_scheduler(optimizer2, cfg)
    optimizer2.load_state_dict(opt_state)
    scheduler2.load_state_dict(sched_state)
    assert epoch_lrs(optimizer2, scheduler2, 3) == rest
    # the state is plain data: it survives a weights_only load
    assert "successor" in sched_state and isinstance(sched_state["successor"], dict)


def test_linear_warmup_and_step_schedulers():
    cfg = prompt_optim_cfg(max_epoch=4)
    cfg.WARMUP_TYPE = "linear"
    cfg.WARMUP_EPOCH = 2
    cfg.WARMUP_MIN_LR = 1e-4
    optimizer = build_optimizer(nn.Linear(2, 2), cfg)
    lrs = epoch_lrs(optimizer, build_lr_scheduler(optimizer, cfg), 3)
    assert lrs == pytest.approx([1e-4, 0.002 * 1 / 2, 0.002])

    cfg = prompt_optim_cfg()
    cfg.WARMUP_EPOCH = -1
    cfg.LR_SCHEDULER = "multi_step"
    cfg.STEPSIZE = (1, 3)
    cfg.GAMMA = 0.5
    optimizer = build_optimizer(nn.Linear(2, 2), cfg)
    assert epoch_lrs(optimizer, build_lr_scheduler(optimizer, cfg), 4) == pytest.approx([0.002, 0.001, 0.001, 0.0005])

    cfg.LR_SCHEDULER = "single_step"
    cfg.STEPSIZE = (-1,)  # Dassl: no decay within the run
    optimizer = build_optimizer(nn.Linear(2, 2), cfg)
    assert epoch_lrs(optimizer, build_lr_scheduler(optimizer, cfg), 5) == pytest.approx([0.002] * 5)


def test_only_trainable_parameters_are_optimised():
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2))
    for p in model[0].parameters():
        p.requires_grad = False
    optimizer = build_optimizer(model, prompt_optim_cfg())
    params = [p for g in optimizer.param_groups for p in g["params"]]
    assert len(params) == 2 and all(p.requires_grad for p in params)
    assert {id(p) for p in params} == {id(p) for p in model[1].parameters()}

    groups = [{"params": model[0].parameters()}, {"params": model[1].parameters(), "lr": 0.5}]
    optimizer = build_optimizer(model, prompt_optim_cfg(), param_groups=groups)
    assert len(optimizer.param_groups) == 1 and optimizer.param_groups[0]["lr"] == 0.5


@pytest.mark.parametrize("name", AVAILABLE_OPTIMIZERS)
def test_every_optimizer_name_builds_and_steps(name):
    cfg = prompt_optim_cfg()
    cfg.NAME = name
    model = nn.Linear(3, 2)
    optimizer = build_optimizer(model, cfg)
    before = model.weight.detach().clone()
    model(torch.ones(4, 3)).sum().backward()
    optimizer.step()
    assert not torch.equal(before, model.weight)
    assert optimizer.param_groups[0]["lr"] == cfg.LR


def test_unknown_names_suggest_the_closest_one():
    cfg = prompt_optim_cfg()
    cfg.NAME = "adamm"
    with pytest.raises(ValueError, match=r"do you mean \[adam"):
        build_optimizer(nn.Linear(2, 2), cfg)
    cfg.NAME = "sgd"
    cfg.LR_SCHEDULER = "cosin"
    with pytest.raises(ValueError, match=r"do you mean \[cosine\]"):
        build_lr_scheduler(build_optimizer(nn.Linear(2, 2), cfg), cfg)


def test_nothing_trainable_is_an_error():
    model = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no parameter requires a gradient"):
        build_optimizer(model, prompt_optim_cfg())
