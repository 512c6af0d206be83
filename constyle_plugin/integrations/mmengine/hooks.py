"""MMEngine hooks of the plugin."""
from __future__ import annotations

import os.path as osp
from typing import Optional

from mmengine.dist import master_only
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

__all__ = ["PrompterExportHook"]


class PrompterExportHook(Hook):
    """Write the prompter being pre-trained (stage 1) as a ``.safetensors`` file stage 2 can load.

    After every checkpoint save and at the end of training, the query encoder of
    :class:`~constyle_plugin.integrations.mmengine.models.ConStylePretrainer` is exported with
    :meth:`ConStyleV2.save_pretrained` (atomically) to ``<work_dir>/<filename>``; point a
    restoration config's ``model.prompter.pretrained`` at it. With ``use_ema`` (default) and an
    ``EMAHook`` in the run, the averaged weights are exported, as the authors release
    ``params_ema``.
    """

    priority = "LOW"

    def __init__(self, filename: str = "constyle_v2_prompter.safetensors", use_ema: bool = True,
                 on_checkpoint: bool = True) -> None:
        if not filename.endswith((".safetensors", ".pth", ".pt")):
            raise ValueError(f"filename: choose a .safetensors or .pth name, got {filename!r}")
        self.filename = filename
        self.use_ema = use_ema
        self.on_checkpoint = on_checkpoint

    def _source(self, runner):
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        if self.use_ema:
            for hook in runner.hooks:
                ema = getattr(hook, "ema_model", None)
                if type(hook).__name__ == "EMAHook" and ema is not None:
                    model = ema.module
                    break
        moco = getattr(model, "moco", None)
        if moco is None or not hasattr(moco, "export_prompter"):
            raise TypeError(f"PrompterExportHook: the model ({type(model).__name__}) is not a ConStylePretrainer")
        return moco

    @master_only
    def export(self, runner) -> Optional[str]:
        path = osp.join(runner.work_dir, self.filename)
        self._source(runner).export_prompter().save_pretrained(path, metadata={"iter": str(runner.iter)})
        runner.logger.info(f"PrompterExportHook: prompter written to {path}")
        return path

    def after_save_checkpoint(self, runner, checkpoint: dict) -> None:
        if self.on_checkpoint:
            self.export(runner)

    def after_train(self, runner) -> None:
        self.export(runner)
