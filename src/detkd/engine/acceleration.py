"""Speed options of the training loop: precision choice, channels-last, ``torch.compile`` with a fallback."""

from __future__ import annotations

import warnings
from typing import Any, Callable

import torch
from torch import nn

#: Fabric precisions detkd accepts (plus ``auto``).
PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true")


def resolve_precision(precision: str, accelerator: str) -> str:
    """The Fabric precision to use; ``auto`` is ``bf16-mixed`` on a CUDA GPU with bf16 support, else ``32-true``.

    Raises:
        ValueError: an unknown precision (the message lists the valid ones).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"train.precision must be one of {', '.join(PRECISIONS)}; got '{precision}'")
    if precision != "auto":
        return precision
    wants_cuda = accelerator in ("auto", "cuda", "gpu")
    if wants_cuda and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


def to_channels_last(batch: Any) -> Any:
    """Every 4-d floating tensor of a (nested) batch in channels-last memory layout; the rest unchanged."""
    if isinstance(batch, torch.Tensor):
        if batch.dim() == 4 and batch.is_floating_point():
            return batch.contiguous(memory_format=torch.channels_last)
        return batch
    if isinstance(batch, dict):
        return {key: to_channels_last(value) for key, value in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_channels_last(value) for value in batch)
    return batch


class CompiledWithFallback:
    """Call a module through ``torch.compile``; if compiling fails, warn once and go on in eager mode.

    Compilation happens on the first call, so that is where failures show (a missing C++
    compiler, an unsupported operation). Errors that torch's compiler raises on later calls
    (recompilation for a new shape) fall back the same way. Any other error of the first call
    is re-raised by the eager call that follows the warning.
    """

    def __init__(self, module: nn.Module, **compile_kwargs: Any) -> None:
        self.module = module
        self.compiled: Callable[..., Any] | None = torch.compile(module, **compile_kwargs)
        self.calls = 0

    @property
    def active(self) -> bool:
        """Whether calls still go through the compiled module."""
        return self.compiled is not None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.compiled is None:
            return self.module(*args, **kwargs)
        first = self.calls == 0
        self.calls += 1
        try:
            return self.compiled(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - which errors a compiler backend raises is open-ended
            if not (first or _is_compiler_error(err)):
                raise
            warnings.warn(
                f"torch.compile failed ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
                "training continues without compilation (set train.compile: false to skip the attempt)",
                RuntimeWarning,
                stacklevel=2,
            )
            self.compiled = None
            return self.module(*args, **kwargs)


def _is_compiler_error(err: BaseException) -> bool:
    module = type(err).__module__ or ""
    return module.startswith(("torch._dynamo", "torch._inductor"))
