"""``check_config``: an MMEngine config checked before the Runner builds anything (unknown types with
a did-you-mean, input paths that do not exist, a module config given as a string, dataloader keys,
hook and randomness arguments, text for a number, a training set without a batch), each refusal
naming the config key; and :func:`fit_dataloaders`.
"""
from __future__ import annotations

import inspect
import os
import os.path as osp
from typing import Any, Dict, List, Mapping, Optional

import torch
from mmengine.config import Config
from mmengine.registry import (DATA_SAMPLERS, DATASETS, EVALUATOR, FUNCTIONS, HOOKS, LOG_PROCESSORS, LOOPS,
                               METRICS, MODELS, OPTIM_WRAPPER_CONSTRUCTORS, OPTIM_WRAPPERS, OPTIMIZERS,
                               PARAM_SCHEDULERS, RUNNERS, TRANSFORMS, VISBACKENDS, VISUALIZERS,
                               WEIGHT_INITIALIZERS, Registry)
from mmengine.runner import Runner

from ...errors import ConfigError, OptionError, did_you_mean

__all__ = ["INPUT_PATH_KEYS", "MMENGINE_DATALOADER_KEYS", "MODULE_CONFIG_KEYS", "SPECIAL_ROOTS", "check_config",
           "fit_dataloaders", "registry_forwards_kwargs"]


# Keys whose string value names an existing input file or folder.
INPUT_PATH_KEYS = ("pretrained", "dataroot", "dataroot_gt", "dataroot_lq", "lq_folder", "gt_folder", "data_root",
                   "meta_info_file", "ann_file", "checkpoint")
# Values of those keys that are not paths (the offline sample photos of the plugin's datasets).
SPECIAL_ROOTS = ("sample_photos", "sample_classes")


# Keys of a model config that hold the config of a module (a string there is a mistake: a
# --cfg-options value that did not parse as a dict, a bare type name).
MODULE_CONFIG_KEYS = ("backbone", "pixel_loss", "data_preprocessor")
# Dataloader keys that MMEngine's Runner.build_dataloader reads itself (the others go to DataLoader).
MMENGINE_DATALOADER_KEYS = ("dataset", "sampler", "batch_sampler", "batch_size", "collate_fn", "worker_init_fn",
                            "num_batch_per_epoch", "disable_subprocess_warning", "persistent_workers")
# MMEngine's default hooks, by name, as Runner.register_default_hooks merges ``default_hooks`` into them
# (an entry without ``type`` takes the default's; an entry under another name is an extra hook).
DEFAULT_HOOK_TYPES = dict(runtime_info="RuntimeInfoHook", timer="IterTimerHook", sampler_seed="DistSamplerSeedHook",
                          logger="LoggerHook", param_scheduler="ParamSchedulerHook", checkpoint="CheckpointHook")
# The keywords CheckpointHook passes to Runner.save_checkpoint itself; its other keywords go there too.
CHECKPOINT_HOOK_PASSES = ("out_dir", "filename", "file_client_args", "save_optimizer", "save_param_scheduler", "meta",
                          "by_epoch", "backend_args")


def fit_dataloaders(cfg: Config) -> None:
    """``persistent_workers`` off in every dataloader that runs without workers (``num_workers=0``,
    the usual debugging override), where torch's DataLoader refuses it."""
    for split in ("train", "val", "test"):
        loader = cfg.get(f"{split}_dataloader")
        if isinstance(loader, Mapping) and not loader.get("num_workers", 0) and loader.get("persistent_workers"):
            loader["persistent_workers"] = False


def registry_forwards_kwargs(cls: Any) -> bool:
    """MMEngine's parameter schedulers and optimiser wrappers take ``**kwargs`` only to hand them to
    the next class of their MRO (``LRSchedulerMixin`` -> ``CosineAnnealingParamScheduler``,
    ``AmpOptimWrapper`` -> ``OptimWrapper``): their arguments are those of the whole chain."""
    from mmengine.optim import OptimWrapper
    from mmengine.optim.scheduler.param_scheduler import _ParamScheduler

    return isinstance(cls, type) and issubclass(cls, (_ParamScheduler, OptimWrapper))


def _argument_names(cls: Any, forwarded: bool = False) -> Optional[List[str]]:
    """The keyword arguments ``cls`` accepts, or ``None`` when it takes any (``**kwargs``). With
    ``forwarded``, ``**kwargs`` passed on along the MRO add the arguments of the next ``__init__``."""
    keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    chain = [c for c in getattr(cls, "__mro__", ()) if "__init__" in vars(c) and c is not object] if forwarded else []
    if not chain:
        try:
            params = inspect.signature(cls).parameters
        except (TypeError, ValueError):
            return None
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return None
        return [n for n, p in params.items() if p.kind in keyword]
    names: List[str] = []
    for klass in chain:
        try:
            params = inspect.signature(vars(klass)["__init__"]).parameters
        except (TypeError, ValueError):
            return None
        names += [n for n, p in params.items() if p.kind in keyword and n != "self" and n not in names]
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return names
    return None


def _named_arguments(func: Any) -> List[str]:
    """The named keyword arguments of ``func`` (a class: its ``__init__``), ``**kwargs`` or not."""
    keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError):
        return []
    return [n for n, p in params.items() if p.kind in keyword and n != "self"]


def _number_defaults(cls: Any) -> Dict[str, Any]:
    """The arguments of ``cls`` (its ``__init__`` chain) whose default is a number (not a bool)."""
    found: Dict[str, Any] = {}
    for func in [vars(c)["__init__"] for c in getattr(cls, "__mro__", ()) if "__init__" in vars(c) and c is not object] \
            or [cls]:
        try:
            params = inspect.signature(func).parameters
        except (TypeError, ValueError):
            continue
        for n, p in params.items():
            if isinstance(p.default, (int, float)) and not isinstance(p.default, bool):
                found.setdefault(n, p.default)
    return found


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


class _Checker:
    def __init__(self, scope: Optional[str]) -> None:
        self.scope = scope
        self.errors: List[str] = []

    def type_(self, registry: Registry, node: Any, key: str, check_args: bool = False) -> Any:
        """``node['type']`` must resolve in ``registry``; with ``check_args``, the other keys must be
        arguments of the class (unless it takes ``**kwargs``). Returns the class found, or None."""
        if not isinstance(node, Mapping):
            return None
        t = node.get("type")
        if t is None or not isinstance(t, str):
            return None  # no type (defaults apply) or a class given directly
        reg = registry
        try:
            with registry.switch_scope_and_registry(self.scope) as reg:
                found = reg.get(t)
        except (KeyError, ImportError, ModuleNotFoundError):
            found = None
        if found is None:
            names = set()
            while reg is not None:  # the scope's names and those it falls back to
                names.update(reg.module_dict)
                reg = reg.parent
            hint = did_you_mean(t, sorted(names), n=3)
            hint = f"; {hint}" if hint else ""
            self.errors.append(f"{key}.type: {t!r} is not registered in MMEngine's {registry.name} registry"
                               f"{hint} (is the package that defines it in custom_imports?)")
        elif check_args:
            self.arguments(found, node, key)
        return found

    def arguments(self, cls: Any, node: Mapping, key: str) -> None:
        options = getattr(cls, "OPTIONS", None)  # wrappers taking **opt declare what they accept
        if isinstance(options, tuple):
            for k in node:
                if k != "type" and k not in options:
                    hint = did_you_mean(k, options)
                    hint = f"; {hint}" if hint else ""
                    self.errors.append(f"{key}.{k}: {cls.__name__} has no option {k!r}{hint}")
            return
        names = _argument_names(cls, forwarded=registry_forwards_kwargs(cls))
        if names is not None:
            self.names_in(node, names, key, f"{getattr(cls, '__name__', cls)} takes no argument")
        self.numbers(cls, node, key)

    def names_in(self, node: Mapping, names: List[str], key: str, says: str) -> None:
        for k in node:
            if k != "type" and k not in names:
                hint = did_you_mean(k, names)
                hint = f"; {hint}" if hint else ""
                self.errors.append(f"{key}.{k}: {says} {k!r}{hint}")

    def numbers(self, cls: Any, node: Mapping, key: str) -> None:
        """A string given for an argument whose default is a number (``lr='abc'``, a ``--cfg-options``
        value that did not parse) is named here; the class would fail only when training starts."""
        defaults = _number_defaults(cls)
        for k, v in node.items():
            if k in defaults and isinstance(v, str):
                self.errors.append(f"{key}.{k}: expected a number (the default is {defaults[k]!r}), got {v!r}")

    def hook(self, node: Any, key: str, default_type: Optional[str] = None) -> None:
        """A hook config: its type, and its arguments against the hook's ``__init__`` (plus ``priority``,
        which the Runner reads). Of the hooks taking ``**kwargs``, CheckpointHook passes them to
        ``Runner.save_checkpoint`` and EMAHook to its averaged model (``ema_type``): checked there."""
        if not isinstance(node, Mapping):
            return
        if default_type is not None and "type" not in node:
            node = {**node, "type": default_type}
        cls = self.type_(HOOKS, node, key)
        if cls is None:
            return
        from mmengine.hooks import CheckpointHook, EMAHook

        names = _argument_names(cls)
        if names is None and isinstance(cls, type) and issubclass(cls, (CheckpointHook, EMAHook)):
            names = _named_arguments(cls)
            if issubclass(cls, CheckpointHook):
                passes = ("self", *CHECKPOINT_HOOK_PASSES)
                names += [n for n in _named_arguments(Runner.save_checkpoint) if n not in passes]
            else:
                ema = self.type_(MODELS, {"type": node.get("ema_type", "ExponentialMovingAverage")},
                                 f"{key}.ema_type")
                forwarded = _argument_names(ema) if ema is not None else None
                if forwarded is None:
                    return
                names += [n for n in forwarded if n != "model"]
                self.numbers(ema, node, key)
        if names is not None:
            self.names_in(node, [*names, "priority"], key, f"{getattr(cls, '__name__', cls)} takes no argument")
        self.numbers(cls, node, key)

    def default_hooks(self, hooks: Any) -> None:
        """``default_hooks``: each entry under a default name (type optional) or an extra hook with its
        own ``type``; a name close to a default's without a type, or set to None, is a typo."""
        if not isinstance(hooks, Mapping):
            return
        for name, hook in hooks.items():
            key = f"default_hooks.{name}"
            if name in DEFAULT_HOOK_TYPES:
                self.hook(hook, key, DEFAULT_HOOK_TYPES[name])
                continue
            if hook is None or (isinstance(hook, Mapping) and "type" not in hook):
                hint = did_you_mean(name, DEFAULT_HOOK_TYPES)
                hint = f"; {hint}" if hint else ""
                what = "None removes a default hook, and" if hook is None else "an extra hook needs a type, and"
                self.errors.append(f"{key}: {what} MMEngine has no default hook {name!r} (its default hooks: "
                                   f"{', '.join(DEFAULT_HOOK_TYPES)}){hint}")
                continue
            self.hook(hook, key)

    def path(self, value: Any, key: str) -> None:
        if isinstance(value, str) and value and value not in SPECIAL_ROOTS and "://" not in value:
            if not osp.exists(osp.expanduser(value)):
                self.errors.append(f"{key}: {value!r} does not exist")

    def paths_in(self, node: Any, key: str) -> None:
        """Check every INPUT_PATH_KEYS entry anywhere under ``node``."""
        if isinstance(node, Mapping):
            for k, v in node.items():
                sub = f"{key}.{k}"
                if k in INPUT_PATH_KEYS:
                    self.path(v, sub)
                self.paths_in(v, sub)
        elif isinstance(node, (list, tuple)):
            for i, v in enumerate(node):
                self.paths_in(v, f"{key}[{i}]")

    def model(self, node: Any, key: str) -> None:
        """Every dict with a ``type`` inside the model config builds from MODELS (except init_cfg)."""
        if isinstance(node, Mapping):
            self.type_(MODELS, node, key, check_args=True)
            self.model_options(node, key)
            for k, v in node.items():
                if k == "init_cfg":
                    for i, item in enumerate(v if isinstance(v, (list, tuple)) else [v]):
                        self.type_(WEIGHT_INITIALIZERS, item, f"{key}.{k}" + (f"[{i}]" if isinstance(v, (list, tuple)) else ""))
                elif isinstance(v, Mapping) and "type" in v:
                    self.model(v, f"{key}.{k}")
                elif isinstance(v, (list, tuple)):
                    for i, item in enumerate(v):
                        if isinstance(item, Mapping) and "type" in item:
                            self.model(item, f"{key}.{k}[{i}]")

    def model_options(self, node: Mapping, key: str) -> None:
        """A model class with a ``check_options(node)`` (the plugin's) checks its own option values."""
        t = node.get("type")
        if not isinstance(t, str):
            return
        try:
            with MODELS.switch_scope_and_registry(self.scope) as reg:
                cls = reg.get(t)
        except (KeyError, ImportError, ModuleNotFoundError):
            return
        check = getattr(cls, "check_options", None)
        if callable(check):
            try:
                check(node)
            except OptionError as exc:
                self.errors.append(str(exc.under(key)))

    def dataset(self, node: Any, key: str) -> None:
        if not isinstance(node, Mapping):
            return
        self.layout(self.type_(DATASETS, node, key, check_args=True), node, key)
        for k, v in node.items():
            if k == "pipeline" and isinstance(v, (list, tuple)):
                for i, t in enumerate(v):
                    self.type_(TRANSFORMS, t, f"{key}.pipeline[{i}]")
            elif k in ("dataset", "datasets"):
                for i, d in enumerate(v if isinstance(v, (list, tuple)) else [v]):
                    self.dataset(d, f"{key}.{k}" + (f"[{i}]" if isinstance(v, (list, tuple)) else ""))

    def layout(self, cls: Any, node: Mapping, key: str) -> None:
        """The data layout of a dataset type declaring ``check_layout`` (the all-in-one benchmark datasets:
        folders, pairs, list files), checked before the runner makes its work dir: MMEngine builds the
        datasets only when training starts."""
        check = getattr(cls, "check_layout", None)
        if check is None:
            return
        from ...errors import LayoutError

        try:
            check(node)
        except OptionError as exc:
            self.errors.append(f"{key}.{exc.key}: {exc.message}")
        except LayoutError as exc:
            self.errors.append(f"{key}.dataroot: {exc}")

    def loop(self, node: Any, key: str) -> None:
        """A loop config names its type (or, for ``train_cfg``, ``by_epoch``, as MMEngine allows) and
        only that loop's arguments."""
        if not isinstance(node, Mapping):
            return
        if "type" in node or key != "train_cfg":
            self.type_(LOOPS, node, key, check_args=True)
        elif "by_epoch" in node:
            from mmengine.runner import EpochBasedTrainLoop, IterBasedTrainLoop

            cls = EpochBasedTrainLoop if node["by_epoch"] else IterBasedTrainLoop
            self.arguments(cls, {k: v for k, v in node.items() if k != "by_epoch"}, key)

    def iterations(self, node: Any) -> None:
        """``train_cfg.max_iters`` / ``max_epochs`` must be positive: a run of zero iterations would
        end at once and save an untrained model."""
        if not isinstance(node, Mapping):
            return
        for name, unit in (("max_iters", "iterations"), ("max_epochs", "epochs")):
            value = node.get(name)
            if name in node and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                self.errors.append(f"train_cfg.{name}: must be a positive whole number of {unit}, got {value!r} "
                                   f"(the run would end without training)")

    def dataloader_keys(self, node: Any, key: str) -> None:
        """The keys of a dataloader config are what MMEngine's ``build_dataloader`` reads plus the
        arguments of ``torch.utils.data.DataLoader`` (where the rest go)."""
        if not isinstance(node, Mapping):
            return
        from torch.utils.data import DataLoader

        names = sorted(set(inspect.signature(DataLoader).parameters) | set(MMENGINE_DATALOADER_KEYS))
        for k in node:
            if k not in names:
                hint = did_you_mean(k, names)
                hint = f"; {hint}" if hint else ""
                self.errors.append(f"{key}.{k}: not a dataloader option{hint}")

    def train_batches(self, loader: Any, train_cfg: Any) -> None:
        """A finite sampler with ``drop_last`` and fewer samples (per process) than ``batch_size``
        yields no batch: the run would never train. Builds the training dataset to count it (only
        in that case)."""
        if not isinstance(loader, Mapping) or not isinstance(loader.get("dataset"), Mapping):
            return
        sampler = loader.get("sampler")
        sampler_type = sampler.get("type") if isinstance(sampler, Mapping) else None
        if isinstance(sampler_type, str) and "Infinite" in sampler_type:
            return
        if loader.get("batch_sampler") is not None:
            return
        batch_size = loader.get("batch_size", 1)
        if not _positive_int(batch_size) or not loader.get("drop_last", False) or batch_size == 1:
            return
        import copy

        try:
            with DATASETS.switch_scope_and_registry(self.scope) as reg:
                dataset = reg.build(copy.deepcopy(dict(loader["dataset"])))
            count = len(dataset)
        except Exception as exc:  # noqa: BLE001  (reported with the key; building is the user's config)
            self.errors.append(f"train_dataloader.dataset: could not be built to count its samples "
                               f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")
            return
        world = max(int(os.environ.get("WORLD_SIZE", "1") or 1), 1)
        per_process = -(-count // world)
        if per_process < batch_size:
            where = f" per process ({count} over {world} processes)" if world > 1 else ""
            self.errors.append(f"train_dataloader.batch_size: {batch_size} is larger than the {per_process} "
                               f"sample(s){where} of train_dataloader.dataset, and drop_last=True drops that "
                               f"one short batch: no batch would ever be trained. Lower batch_size or set "
                               f"train_dataloader.drop_last=False")

    def batch_size(self, loader: Any, key: str) -> None:
        if isinstance(loader, Mapping) and "batch_size" in loader and not _positive_int(loader["batch_size"]):
            self.errors.append(f"{key}.batch_size: must be a positive whole number, got {loader['batch_size']!r}")

    def randomness(self, node: Any) -> None:
        """``randomness`` is a dict of ``Runner.set_randomness``'s arguments (``seed``, ...)."""
        if node is None:
            return
        if not isinstance(node, Mapping):
            self.errors.append(f"randomness: expected a dict such as dict(seed=0), got {node!r} (with --cfg-options, "
                               f"set its keys one by one: randomness.seed=0)")
            return
        self.names_in(node, _named_arguments(Runner.set_randomness), "randomness", "Runner.set_randomness takes no "
                      "argument")

    def load_from(self, value: Any) -> None:
        """``load_from`` is an MMEngine checkpoint file; a folder (a ``save_pretrained`` one included) is
        named here with the conversion to use, where MMEngine would say it "can not be found"."""
        if not isinstance(value, str) or not value or "://" in value:
            return
        path = osp.expanduser(value)
        if not osp.exists(path):
            self.errors.append(f"load_from: {value!r} does not exist")
        elif osp.isdir(path):
            from ...core.pretrained import is_pretrained_dir

            if is_pretrained_dir(path):
                self.errors.append(f"load_from: {value!r} is a save_pretrained folder, not an MMEngine checkpoint; "
                                   f"convert it first: constyle convert --checkpoint {value} --to mmengine "
                                   f"--output {value.rstrip('/' + os.sep)}.pth, then load_from=<that file>")
            else:
                self.errors.append(f"load_from: {value!r} is a folder; load_from takes an MMEngine checkpoint file "
                                   f"(e.g. {osp.join(value, 'iter_1000.pth')})")

    def many(self, registry: Registry, node: Any, key: str, check_args: bool = False) -> None:
        if isinstance(node, (list, tuple)):
            for i, item in enumerate(node):
                self.type_(registry, item, f"{key}[{i}]", check_args)
        else:
            self.type_(registry, node, key, check_args)


def check_config(cfg: Config) -> None:
    """Fail early, naming the config key, when a config names an unregistered ``type``, gives a
    model / dataset / metric / hook an argument it does not take, or names a missing input file
    or folder.

    Checks the model (every nested ``type`` against MODELS), the datasets, samplers and collate
    functions of the three dataloaders, evaluators and metrics, the optimiser wrapper, optimiser,
    constructor and parameter schedulers, loops, hooks, visualiser, log processor and runner
    type; the arguments of the loops and hooks and the keys of the dataloaders and ``randomness`` (a
    misspelt ``max_iter``, ``batchsize`` or ``intervall`` is named with a did-you-mean; a
    ``default_hooks`` entry without a type is checked as the default hook of that name); text given
    for a numeric argument; a positive ``train_cfg.max_iters`` / ``max_epochs`` and ``batch_size``;
    that a finite training sampler with ``drop_last`` gets at least one full batch (the training
    dataset is built to count it only then); and the paths under ``model`` and the datasets in keys
    such as ``pretrained``, ``dataroot_gt``, ``lq_folder``, ``gt_folder``, plus ``load_from`` (a
    checkpoint file, not a folder). Raises :class:`ConfigError` listing every problem found, before anything is written.
    """
    c = _Checker(cfg.get("default_scope"))
    if "model" not in cfg or cfg.get("model") is None:
        c.errors.append("model: the config has no model")
    else:
        c.model(cfg.model, "model")
        c.paths_in(cfg.model, "model")
        if isinstance(cfg.model, Mapping):
            for k in MODULE_CONFIG_KEYS:
                value = cfg.model.get(k)
                if k in cfg.model and value is not None and not isinstance(value, (Mapping, torch.nn.Module)):
                    c.errors.append(f"model.{k}: expected a dict(type=...) config, got {value!r}")
    for split in ("train", "val", "test"):
        loader = cfg.get(f"{split}_dataloader")
        if not isinstance(loader, Mapping):
            continue
        key = f"{split}_dataloader"
        c.dataset(loader.get("dataset"), f"{key}.dataset")
        c.paths_in(loader.get("dataset"), f"{key}.dataset")
        c.type_(DATA_SAMPLERS, loader.get("sampler"), f"{key}.sampler")
        c.type_(DATA_SAMPLERS, loader.get("batch_sampler"), f"{key}.batch_sampler")
        c.type_(FUNCTIONS, loader.get("collate_fn"), f"{key}.collate_fn")
    for split in ("val", "test"):
        ev = cfg.get(f"{split}_evaluator")
        key = f"{split}_evaluator"
        if isinstance(ev, Mapping) and "metrics" in ev:
            c.type_(EVALUATOR, ev, key)
            c.many(METRICS, ev["metrics"], f"{key}.metrics", check_args=True)
        elif ev is not None:
            c.many(METRICS, ev, key, check_args=True)
    ow = cfg.get("optim_wrapper")
    if isinstance(ow, Mapping):
        # constructor and paramwise_cfg are read by the optimiser-wrapper constructor, not the wrapper
        c.type_(OPTIM_WRAPPERS, {k: v for k, v in ow.items() if k not in ("constructor", "paramwise_cfg")},
                "optim_wrapper", check_args=True)
        c.type_(OPTIMIZERS, ow.get("optimizer"), "optim_wrapper.optimizer", check_args=True)
        ctor = ow.get("constructor")
        if isinstance(ctor, str):
            c.type_(OPTIM_WRAPPER_CONSTRUCTORS, {"type": ctor}, "optim_wrapper.constructor")
    c.many(PARAM_SCHEDULERS, cfg.get("param_scheduler"), "param_scheduler", check_args=True)
    for key in ("train_cfg", "val_cfg", "test_cfg"):
        c.loop(cfg.get(key), key)
    c.iterations(cfg.get("train_cfg"))
    for split in ("train", "val", "test"):
        c.dataloader_keys(cfg.get(f"{split}_dataloader"), f"{split}_dataloader")
        c.batch_size(cfg.get(f"{split}_dataloader"), f"{split}_dataloader")
    c.default_hooks(cfg.get("default_hooks") or {})
    custom = cfg.get("custom_hooks") or []
    for i, hook in enumerate(custom if isinstance(custom, (list, tuple)) else [custom]):
        c.hook(hook, f"custom_hooks[{i}]" if isinstance(custom, (list, tuple)) else "custom_hooks")
    vis = cfg.get("visualizer")
    c.type_(VISUALIZERS, vis, "visualizer")
    if isinstance(vis, Mapping):
        c.many(VISBACKENDS, vis.get("vis_backends") or [], "visualizer.vis_backends")
    c.type_(LOG_PROCESSORS, cfg.get("log_processor"), "log_processor", check_args=True)
    runner_type = cfg.get("runner_type")
    if isinstance(runner_type, str):
        c.type_(RUNNERS, {"type": runner_type}, "runner_type")
    c.load_from(cfg.get("load_from"))
    c.randomness(cfg.get("randomness"))
    if not c.errors:
        c.train_batches(cfg.get("train_dataloader"), cfg.get("train_cfg"))
    if c.errors:
        raise ConfigError("; ".join(c.errors))
