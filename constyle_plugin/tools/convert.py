"""``constyle convert``: trainer checkpoints to a saved wrapped net (``save_pretrained``'s folder) and back.

- BasicSR (``net_g_*.pth``: ``params`` / ``params_ema``) or MMEngine (the Runner's ``.pth``:
  ``state_dict`` / ``ema_state_dict``) -> ``config.json`` + ``model.safetensors`` (+
  ``model_ema.safetensors``), the network built from the run's config as ``constyle restore`` builds it;
- a saved folder -> a BasicSR checkpoint (``{"params", "params_ema"}``, for ``pretrain_network_g``) or
  an MMEngine checkpoint (``{"meta", "state_dict", "ema_state_dict"}``, for ``load_from``), the
  prompter's weights included (both trainers load strictly, prompter too), carrying the folder's
  config.json, so that it converts and restores again without the training config;
- one trainer's checkpoint -> the other's, through a saved folder.

Core module: torch only; reading a run's config goes through the readers the integrations register.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch
from torch import Tensor

from ..errors import ConStyleError
from ..core.init_args import init_args
from ..core.pretrained import CARRIED_CONFIG, FORMAT, is_pretrained_dir, read_config, save_pretrained
from ..files import atomic_write
from ..core.unet import ConStyleUNet

__all__ = ["TRAINERS", "check_checkpoint_output", "check_folder_output", "from_trainer_checkpoint",
           "to_trainer_checkpoint", "trainer_to_trainer"]

PathLike = Union[str, os.PathLike]
TRAINERS = ("basicsr", "mmengine")


def from_trainer_checkpoint(checkpoint: PathLike, output: PathLike, config: Optional[PathLike] = None,
                            include_prompter: Optional[bool] = None) -> Path:
    """Convert a BasicSR or MMEngine checkpoint of a wrapped net into a ``save_pretrained`` folder.

    ``config``: the run's options / config file (default: the one its trainer recorded). The EMA copy,
    where the run kept one, becomes ``model_ema.safetensors``. ``include_prompter`` (default: only
    when the run's prompter is not the packaged one) stores the prompter's weights too.
    """
    from .restore import read_training_run

    check_folder_output(output)
    run = read_training_run(checkpoint, config)
    net = run.net
    if not isinstance(net, ConStyleUNet):
        raise ConStyleError(f"{checkpoint}: the network of {run.source} is a {type(net).__name__}, not a U-Net "
                            f"wrapped with the prompter (ConStyleUNet); save_pretrained is for wrapped nets")
    ema: Optional[Dict[str, Tensor]] = None
    if "ema" in run.states:
        run.load("ema")
        ema = {k: v.clone() for k, v in net.state_dict().items()}
    run.load("model")
    backbone = run.backbone_options if init_args(net.backbone) is None else None
    return save_pretrained(net, output, include_prompter=include_prompter, ema=ema, backbone_config=backbone)


def to_trainer_checkpoint(directory: PathLike, output: PathLike, trainer: str = "basicsr",
                          backbone: Any = None, prompter: Any = None) -> Path:
    """Write the net saved in ``directory`` as a ``trainer`` (``basicsr`` / ``mmengine``) checkpoint.

    ``backbone`` / ``prompter``: as in :func:`~constyle_plugin.core.pretrained.load_pretrained` (a user's
    own backbone class must be passed). The file is written atomically.
    """
    if trainer not in TRAINERS:
        raise ConStyleError(f"--to: {trainer!r} is not a trainer; choose from {list(TRAINERS)}")
    check_checkpoint_output(output, trainer)
    if not is_pretrained_dir(directory):
        read_config(directory)  # raises, naming what is wrong
    config = read_config(directory)
    files = config["weights"]
    states = {"model": _full_state(ConStyleUNet.from_pretrained(directory, backbone, prompter, ema=False))}
    if "ema" in files:
        states["ema"] = _full_state(ConStyleUNet.from_pretrained(directory, backbone, prompter, ema=True))
    if trainer == "basicsr":
        payload: Dict[str, Any] = {"params": states["model"], CARRIED_CONFIG: config}
        if "ema" in states:
            payload["params_ema"] = states["ema"]
    else:
        # As MMEngine's EMAHook saves: the average in state_dict (what load_from and deployment read), the
        # trained model's own weights in ema_state_dict (module.* around `steps`), swapped back on resume.
        saved, other = (states["ema"], states["model"]) if "ema" in states else (states["model"], None)
        payload = {"meta": {"converted_from": str(directory), "format": FORMAT, CARRIED_CONFIG: config},
                   "state_dict": {f"net.{k}": v for k, v in saved.items()}}
        if other is not None:
            payload["ema_state_dict"] = {"steps": torch.tensor(0), **{f"module.net.{k}": v for k, v in other.items()}}
    output = Path(output)
    atomic_write(output, lambda tmp: torch.save(payload, tmp))
    return output


def check_checkpoint_output(output: PathLike, trainer: str) -> None:
    """A trainer checkpoint is one file: ``output`` must not be (or be written as) a folder."""
    text = os.fspath(output)
    if Path(text).is_dir() or text.endswith(("/", os.sep)):
        raise ConStyleError(f"--output: {text} is a folder; the {trainer} checkpoint is one file: name it, e.g. "
                            f"{Path(text) / ('net_g_converted.pth' if trainer == 'basicsr' else 'converted.pth')}")


def check_folder_output(output: PathLike) -> None:
    """A trainer checkpoint converts into a folder: ``output`` must not be an existing file or named as a
    checkpoint file (``.pth``, ``.pt``, ``.ckpt``, ``.safetensors``)."""
    path = Path(output)
    if path.is_file() or path.suffix.lower() in (".pth", ".pt", ".ckpt", ".safetensors"):
        raise ConStyleError(f"--output: {output} names a file, but a checkpoint converts into a folder (config.json "
                            f"+ weights); name a folder, or add --to basicsr|mmengine to write a trainer checkpoint")


def trainer_to_trainer(checkpoint: PathLike, output: PathLike, trainer: str, config: Optional[PathLike] = None
                       ) -> Path:
    """A BasicSR or MMEngine checkpoint of a wrapped net as a ``trainer`` checkpoint, through a saved folder
    in a temporary directory (:func:`from_trainer_checkpoint`, then :func:`to_trainer_checkpoint`)."""
    import tempfile

    if trainer not in TRAINERS:
        raise ConStyleError(f"--to: {trainer!r} is not a trainer; choose from {list(TRAINERS)}")
    check_checkpoint_output(output, trainer)
    with tempfile.TemporaryDirectory(prefix="constyle-convert-") as tmp:
        folder = from_trainer_checkpoint(checkpoint, Path(tmp) / "saved", config=config)
        return to_trainer_checkpoint(folder, output, trainer=trainer)


def _full_state(net: ConStyleUNet) -> Dict[str, Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
