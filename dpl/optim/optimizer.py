"""``build_optimizer`` over the trainable parameters only (Dassl's names and config keys)."""
import torch
import torch.nn as nn

from dpl.utils.errors import InvalidInputError
from dpl.utils.registry import check_availability
from dpl.utils.torchtools import tolist_if_not

AVAILABLE_OPTIMIZERS = ["adam", "amsgrad", "sgd", "rmsprop", "radam", "adamw"]


def _trainable(params):
    return [p for p in params if p.requires_grad]


def _collect_param_groups(model, optim_cfg, param_groups):
    """Parameter groups holding only parameters with ``requires_grad``; empty groups are dropped."""
    if param_groups is not None:
        groups = [dict(g, params=_trainable(g["params"])) for g in param_groups]
    elif isinstance(model, nn.Module):
        if optim_cfg.STAGED_LR:
            groups = _staged_groups(model, optim_cfg)
        else:
            groups = [{"params": _trainable(model.parameters())}]
    else:  # an iterable of parameters or of param-group dicts
        items = list(model)
        if items and isinstance(items[0], dict):
            groups = [dict(g, params=_trainable(g["params"])) for g in items]
        else:
            groups = [{"params": _trainable(items)}]
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise ValueError("build_optimizer(): no parameter requires a gradient; nothing to optimise")
    return groups


def _staged_groups(model, optim_cfg):
    """New layers (``OPTIM.NEW_LAYERS``) at ``LR``; the rest at ``LR * BASE_LR_MULT``."""
    if isinstance(model, nn.DataParallel):
        model = model.module
    new_layers = tolist_if_not(list(optim_cfg.NEW_LAYERS))
    if not new_layers:
        raise InvalidInputError("OPTIM.STAGED_LR is True but OPTIM.NEW_LAYERS is empty: name the layers to train with OPTIM.LR")
    new_params, base_params = [], []
    for name, module in model.named_children():
        (new_params if name in new_layers else base_params).extend(module.parameters())
    return [
        {"params": _trainable(base_params), "lr": optim_cfg.LR * optim_cfg.BASE_LR_MULT},
        {"params": _trainable(new_params)},
    ]


def build_optimizer(model, optim_cfg, param_groups=None):
    """An optimizer named by ``optim_cfg.NAME`` over ``model``'s trainable parameters.

    ``model``: an ``nn.Module``, or an iterable of parameters / param-group dicts. ``param_groups``
    (list of dicts) takes precedence when given. Frozen parameters are never handed to the optimizer.
    """
    name = optim_cfg.NAME
    check_availability(name, AVAILABLE_OPTIMIZERS, "optimizer (OPTIM.NAME)")
    groups = _collect_param_groups(model, optim_cfg, param_groups)
    lr, wd = optim_cfg.LR, optim_cfg.WEIGHT_DECAY
    betas = (optim_cfg.ADAM_BETA1, optim_cfg.ADAM_BETA2)
    if name in ("adam", "amsgrad"):
        return torch.optim.Adam(groups, lr=lr, weight_decay=wd, betas=betas, amsgrad=name == "amsgrad")
    if name == "sgd":
        return torch.optim.SGD(
            groups,
            lr=lr,
            momentum=optim_cfg.MOMENTUM,
            weight_decay=wd,
            dampening=optim_cfg.SGD_DAMPNING,
            nesterov=optim_cfg.SGD_NESTEROV,
        )
    if name == "rmsprop":
        return torch.optim.RMSprop(
            groups, lr=lr, momentum=optim_cfg.MOMENTUM, weight_decay=wd, alpha=optim_cfg.RMSPROP_ALPHA
        )
    if name == "radam":
        return torch.optim.RAdam(groups, lr=lr, weight_decay=wd, betas=betas)
    return torch.optim.AdamW(groups, lr=lr, weight_decay=wd, betas=betas)
