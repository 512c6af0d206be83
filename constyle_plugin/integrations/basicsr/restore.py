"""How ``constyle restore`` builds the network of a BasicSR options file, and how ``constyle evaluate``
runs the basicsr metrics importable here (see :mod:`constyle_plugin.runs`)."""
from __future__ import annotations

import contextlib
from typing import Any, ContextManager, Mapping

from torch import nn

from ...errors import ConStyleError
from .fork import cuda_calls_on_cpu
from .registry import ARCH, ForkHost, current_host

__all__ = ["READER", "BasicSRReader"]


class BasicSRReader:
    """Builds ``network_g`` through the basicsr importable here, whichever its flavour: PyPI
    BasicSR's registries or a 1.2-era fork's module scans (a fork's own NAFNet is the one its
    checkpoints hold)."""

    def build_arch(self, arch_type: Any, options: Mapping[str, Any], source: str) -> nn.Module:
        host = current_host()
        cls = host.find(ARCH, arch_type)
        if cls is None:
            raise ConStyleError(f"--config {source}: network_g.type: {host.unknown(ARCH, arch_type)}")
        return cls(**options)

    def metric_context(self) -> ContextManager[None]:
        """Where the basicsr here is a 1.2-era fork and there is no CUDA, its metric functions run with
        their hard-coded ``.cuda()`` calls left on the CPU (NAFNet's SSIM); otherwise nothing changes."""
        return cuda_calls_on_cpu() if isinstance(current_host(), ForkHost) else contextlib.nullcontext()


READER = BasicSRReader()
