"""How ``constyle restore`` builds the network of a BasicSR options file (see :mod:`constyle_plugin.runs`)."""
from __future__ import annotations

from typing import Any, Mapping

from torch import nn

from ...errors import ConStyleError
from .registry import ARCH, current_host

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


READER = BasicSRReader()
