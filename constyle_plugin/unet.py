"""wrap_unet / unwrap_unet: the ConStyle v2 prompter inside any U-Net, through forward hooks."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

__all__ = ["StageSpec"]


@dataclass(frozen=True)
class StageSpec:
    """Where the prompt goes: module names as in ``backbone.named_modules()``.

    encoder: the modules whose outputs are the encoder features at 1/2, 1/4 and 1/8 of the input
        resolution, in that order (they receive ``f1``, ``f2``, ``f3``); fewer than three is fine.
    bottleneck: the module whose output is the coarsest feature map (modulated by the latent).
    decoder: the modules whose outputs climb back up (optionally modulated by the latent).
    """

    encoder: Tuple[str, ...] = ()
    bottleneck: Optional[str] = None
    decoder: Tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "encoder", tuple(self.encoder))
        object.__setattr__(self, "decoder", tuple(self.decoder))

    @classmethod
    def from_dict(cls, spec: Union["StageSpec", Mapping[str, Any]]) -> "StageSpec":
        """Build from a mapping such as an options file's ``stages: {encoder: [...], ...}``."""
        if isinstance(spec, StageSpec):
            return spec
        unknown = set(spec) - {"encoder", "bottleneck", "decoder"}
        if unknown:
            raise ValueError(f"stages: unknown key(s) {sorted(unknown)}; expected encoder, bottleneck, decoder")
        return cls(encoder=tuple(spec.get("encoder") or ()), bottleneck=spec.get("bottleneck"),
                   decoder=tuple(spec.get("decoder") or ()))

    def to_dict(self) -> Dict[str, Any]:
        return {"encoder": list(self.encoder), "bottleneck": self.bottleneck, "decoder": list(self.decoder)}
