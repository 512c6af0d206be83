"""MMEngine hooks of the plugin."""
from __future__ import annotations

import os.path as osp
from typing import Optional

from mmengine.dist import master_only
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from ...errors import ConStyleError, ConStyleTypeError

__all__ = ["PrompterExportHook", "StopOnSignalHook"]


class PrompterExportHook(Hook):
    """Write the prompter being pre-trained (stage 1) as a ``.safetensors`` file stage 2 can load.

    After every checkpoint save and at the end of training, the query encoder of
    :class:`~constyle_plugin.integrations.mmengine.models.ConStylePretrainer` is exported with
    :meth:`ConStyleV2.save_pretrained` (atomically) to ``<work_dir>/<filename>``, and a degradation head
    the model has beside it (``<stem>.head.safetensors``, for ``constyle inspect``); point a
    restoration config's ``model.prompter.pretrained`` at it. With ``use_ema`` (default) and an
    ``EMAHook`` in the run, the averaged weights are exported, as the authors release
    ``params_ema``.
    """

    priority = "LOW"

    def __init__(self, filename: str = "constyle_v2_prompter.safetensors", use_ema: bool = True,
                 on_checkpoint: bool = True) -> None:
        if not filename.endswith((".safetensors", ".pth", ".pt")):
            raise ConStyleError(f"filename: choose a .safetensors or .pth name, got {filename!r}")
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
        if moco is None or not hasattr(moco, "save_prompter"):
            raise ConStyleTypeError(f"PrompterExportHook: the model ({type(model).__name__}) is not a ConStylePretrainer")
        return moco

    @master_only
    def export(self, runner) -> Optional[str]:
        path = osp.join(runner.work_dir, self.filename)
        _, head = self._source(runner).save_prompter(path, metadata={"iter": str(runner.iter)})
        runner.logger.info(f"PrompterExportHook: prompter written to {path}"
                           + (f", its degradation head to {head}" if head else ""))
        return path

    def after_save_checkpoint(self, runner, checkpoint: dict) -> None:
        if self.on_checkpoint:
            self.export(runner)

    def after_train(self, runner) -> None:
        self.export(runner)


class StopOnSignalHook(Hook):
    """Stop training cleanly after a SIGINT / SIGTERM (``constyle train`` adds it).

    After the iteration in progress (and after the other hooks' ``after_train_iter``: logging, a
    scheduled checkpoint), when ``stop`` (:class:`~constyle_plugin.interrupt.StopSignals`) recorded a
    signal on any rank, the run is saved as the ``CheckpointHook`` would save it at this iteration
    (``iter_<n>.pth`` in its folder, optimiser and parameter schedulers included, written atomically by
    :class:`~.runner.ConStyleRunner`; ``last_checkpoint`` pointing at it), and
    :class:`~constyle_plugin.interrupt.TrainingStopped` is raised; ``--resume`` continues from it.
    """

    priority = "LOWEST"

    def __init__(self, stop) -> None:
        self.stop = stop

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        from mmengine.dist import is_main_process

        from ...interrupt import TrainingStopped, signal_name

        if not self.stop.agreed():
            return
        step = runner.iter + 1
        checkpoint_hook = next((h for h in runner.hooks if type(h).__name__ == "CheckpointHook"), None)
        out_dir = getattr(checkpoint_hook, "out_dir", None) or runner.work_dir
        template = getattr(checkpoint_hook, "filename_tmpl", None) or "iter_{}.pth"
        if getattr(checkpoint_hook, "by_epoch", False):  # an epoch-based checkpoint name would claim a whole epoch
            template = "iter_{}.pth"
        filename = template.format(step)
        path = osp.join(out_dir, filename)
        runner.logger.info(f"{signal_name(self.stop.signum)} received: saving {path} after iteration {step}, "
                           f"then stopping")
        if checkpoint_hook is None or osp.abspath(getattr(checkpoint_hook, "last_ckpt", "") or "") != osp.abspath(path):
            kwargs = {}
            if checkpoint_hook is not None:
                kwargs = dict(save_optimizer=checkpoint_hook.save_optimizer,
                              save_param_scheduler=checkpoint_hook.save_param_scheduler)
            runner.save_checkpoint(out_dir, filename, meta=dict(epoch=runner.epoch, iter=step), by_epoch=False,
                                   **kwargs)
            if is_main_process():
                with open(osp.join(runner.work_dir, "last_checkpoint"), "w") as fh:
                    fh.write(path)
        raise TrainingStopped(self.stop.signum, step, [path])
