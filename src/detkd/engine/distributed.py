"""What the engine needs to know about multi-process runs, outside Fabric's own API.

* :func:`is_launch_rank_zero` tells code that runs *before* the trainer starts Fabric (writing a run's
  config, building a cache) whether this process is the one that should do it;
* :func:`launched_by_fabric_cli` says whether ``fabric run`` started the processes (then
  ``Fabric.launch`` must not be called again);
* :func:`convert_sync_batchnorm` / :func:`revert_sync_batchnorm` share BatchNorm statistics
  across processes during training and give the model back with its own BatchNorm classes.
"""

from __future__ import annotations

import os

import torch
from torch import nn

#: Environment variables that launchers set, global rank first. torchrun and Fabric's own
#: launchers set ``RANK``/``LOCAL_RANK``/``NODE_RANK``; SLURM sets ``SLURM_PROCID``.
_GLOBAL_RANK_VARIABLES = ("RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")


def is_launch_rank_zero() -> bool:
    """``True`` in the one process that writes shared files (configs, caches) before training.

    Reads the launcher's environment, so it works before Fabric has started: torchrun sets
    ``RANK``; Fabric's script launcher (strategy ``ddp`` without torchrun) sets only
    ``LOCAL_RANK`` and ``NODE_RANK`` in the processes it starts; SLURM sets ``SLURM_PROCID``.
    A process nothing launched is rank 0.
    """
    for name in _GLOBAL_RANK_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value) == 0
    return all(os.environ.get(name, "0") in ("", "0") for name in ("LOCAL_RANK", "NODE_RANK", "GROUP_RANK"))


def launched_by_fabric_cli() -> bool:
    """``True`` when ``fabric run`` started this process (Fabric's own marker variable)."""
    return os.environ.get("LT_CLI_USED", "0") == "1"


def convert_sync_batchnorm(module: nn.Module) -> dict[str, type[nn.Module]]:
    """Replace every BatchNorm layer of ``module`` (in place) by a :class:`torch.nn.SyncBatchNorm`.

    Returns the original class of each replaced layer by its qualified name, for
    :func:`revert_sync_batchnorm`. Parameters and running statistics are shared, not copied.
    ``module`` itself must not be a BatchNorm layer.
    """
    originals: dict[str, type[nn.Module]] = {}
    for name, child in list(module.named_modules()):
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, nn.SyncBatchNorm):
            if not name:
                raise ValueError("convert_sync_batchnorm needs a module that contains BatchNorm layers, not one")
            originals[name] = type(child)
            _replace(module, name, _copy_batchnorm(child, nn.SyncBatchNorm))
    return originals


def revert_sync_batchnorm(module: nn.Module, originals: dict[str, type[nn.Module]]) -> None:
    """Undo :func:`convert_sync_batchnorm`: the listed layers get their original classes back."""
    for name, cls in originals.items():
        layer = module.get_submodule(name)
        if isinstance(layer, nn.SyncBatchNorm):
            _replace(module, name, _copy_batchnorm(layer, cls))


def _copy_batchnorm(layer: nn.modules.batchnorm._BatchNorm, cls: type[nn.Module]) -> nn.Module:
    new = cls(layer.num_features, layer.eps, layer.momentum, layer.affine, layer.track_running_stats)
    if layer.affine:
        new.weight, new.bias = layer.weight, layer.bias  # the same Parameter objects
    if layer.track_running_stats:
        new.running_mean, new.running_var = layer.running_mean, layer.running_var
        new.num_batches_tracked = layer.num_batches_tracked
    new.train(layer.training)
    return new


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, leaf, new)


def sync_batchnorm_supported(device: torch.device) -> bool:
    """torch's SyncBatchNorm runs on accelerators only (CUDA, XPU, HPU, ...), not on CPU."""
    return device.type != "cpu" and device.type != "mps"
