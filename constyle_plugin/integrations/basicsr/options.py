"""Option checks run by the ``basicsr`` command before anything is built: the keys each reader reads
(:func:`check_option_keys`, a did-you-mean for a misspelt one), the numbers BasicSR would accept and
then fail on (:func:`check_training_numbers`), the plugin's datasets and networks
(:func:`check_options`, :func:`check_call_options`), the all-in-one test sets a root does not hold
(:func:`drop_absent_test_sets`) and where the sample photos go (:func:`point_sample_datasets`).
Registration itself is :mod:`.registry`.
"""
from __future__ import annotations

import os
import warnings
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from ...core.builder import check_file
from ...errors import LayoutError, OptionError, did_you_mean, join_keys

from .registry import ARCH, DATASET, LOSS, MODEL, BasicSRHost, check_network_options, current_host

__all__ = ["OptionWarning", "check_call_options", "check_option_keys", "check_options", "check_training_numbers",
           "drop_absent_test_sets", "point_sample_datasets"]


# ------------------------------------------------------------------------------------------------
# Option checks (run by the `basicsr` command before anything is built)
# ------------------------------------------------------------------------------------------------
_SAMPLE_ROOTS = {"MixDegradationDataset": ("dataroot_gt", "sample_photos"),
                 "ConStylePretrainDataset": ("dataroot", "sample_classes")}


def point_sample_datasets(opt: Mapping[str, Any]) -> None:
    """Give the plugin's datasets that read the offline sample photos (``dataroot_gt: sample_photos``,
    ``dataroot: sample_classes`` or none) a ``sample_dir`` in the run's folder, where they are
    exported at first use (``experiments/<name>/sample_photos``, or ``results/<name>/...``)."""
    folder = opt["path"].get("experiments_root") or opt["path"].get("results_root")
    for dataset in (opt.get("datasets") or {}).values():
        if not isinstance(dataset, dict):
            continue
        root_key, special = _SAMPLE_ROOTS.get(dataset.get("type"), (None, None))
        if root_key and dataset.get(root_key) in (None, special) and not dataset.get("sample_dir"):
            dataset["sample_dir"] = os.path.join(folder, special)


def drop_absent_test_sets(opt: Dict[str, Any], warn: Optional[Callable[[str], None]] = None) -> List[str]:
    """Partial settings: remove the ``val_*`` / ``test_*`` entries of type ``AllInOneTestDataset`` whose test
    set is absent from their ``dataroot`` (none of its folders there), so a run validates on the sets a root
    holds; ``warn`` is told which were left out. A set that is there but laid out wrongly stays, for
    :func:`check_options` to refuse. Returns the keys removed.

    Raises :class:`OptionError` when every such entry would go (a root holding none of the sets): naming
    the folders looked for."""
    from ...data.benchmark_layouts import absent_test_sets

    datasets = opt.get("datasets") or {}
    candidates, absent = [], {}
    for phase, dataset in datasets.items():
        if phase.split("_")[0] not in ("val", "test") or not isinstance(dataset, Mapping):
            continue
        if dataset.get("type") != "AllInOneTestDataset":
            continue
        setting, root, task = dataset.get("setting"), dataset.get("dataroot"), dataset.get("task")
        if not (isinstance(setting, str) and isinstance(root, (str, os.PathLike)) and isinstance(task, str)):
            continue  # left to check_options, which names what is wrong
        if not os.path.isdir(os.path.expanduser(str(root))):
            continue
        candidates.append(phase)
        try:
            missing = absent_test_sets(setting, os.path.expanduser(str(root)), [task])
        except (OptionError, LayoutError):
            continue
        if task in missing:
            absent[phase] = missing[task]
    if not absent:
        return []
    if len(absent) == len(candidates):
        raise OptionError(join_keys("datasets", candidates[0], "dataroot"),
                          "none of the test sets the val / test entries name is there (looked for "
                          + ", ".join(str(f) for f in dict.fromkeys(absent.values())) + "); lay them out with "
                          "`constyle data prepare` (docs/data.md)")
    for phase in absent:
        del datasets[phase]
    if warn is not None:
        warn("partial validation: " + ", ".join(f"datasets.{p} ({absent[p]} absent)" for p in absent)
             + f" left out; validating on {', '.join(f'datasets.{p}' for p in candidates if p not in absent)} "
             f"only, so any average over the setting's columns is partial")
    return list(absent)


class OptionWarning(UserWarning):
    """An option key that nothing reads, in a section where BasicSR allows extra keys."""


# Keys that PyPI BasicSR 1.4.2 itself reads (basicsr.utils.options.parse_options, basicsr.train / test,
# basicsr.data.build_dataloader, BaseModel); ``network_*`` keys are networks. The plugin's own keys are
# declared by the classes that read them: a dataset's ``OPTIONS``, a model's ``TRAIN_OPTIONS`` /
# ``VAL_OPTIONS`` (constyle_plugin.data.datasets, .models).
BASICSR_TOP_LEVEL = frozenset({"name", "model_type", "scale", "num_gpu", "manual_seed", "datasets", "path", "train",
                               "val", "logger", "dist_params", "find_unused_parameters",
                               # set by parse_options / train_pipeline
                               "is_train", "dist", "rank", "world_size", "auto_resume", "root_path"})
BASICSR_DATALOADER = frozenset({"name", "type", "phase", "scale", "num_worker_per_gpu", "batch_size_per_gpu",
                                "dataset_enlarge_ratio", "prefetch_mode", "num_prefetch_queue", "pin_memory",
                                "persistent_workers",
                                "use_shuffle"})  # in BasicSR's own options templates (1.4.2 always shuffles)
BASICSR_LOGGER = frozenset({"print_freq", "save_checkpoint_freq", "use_tb_logger", "wandb"})
BASICSR_PATH = frozenset({"resume_state", "ignore_resume_networks",
                          # set by parse_options
                          "experiments_root", "models", "training_states", "log", "visualization", "results_root"})
_BASICSR_PATH_PREFIXES = ("pretrain_network_", "param_key_", "strict_load_")


def _hint(key: str, known: Sequence[str], cutoff: float = 0.6) -> str:
    return did_you_mean(key, sorted(known), cutoff=cutoff)


def _unknown_keys(section: Any, known: Sequence[str], where: str, reader: str) -> None:
    """OptionError for the first key of ``section`` that is not in ``known`` (``reader`` reads the section)."""
    if not isinstance(section, Mapping):
        return
    for key in section:
        if key not in known:
            hint = _hint(key, known)
            raise OptionError(join_keys(where, str(key)),
                              f"unknown option: {reader} does not read it{'; ' + hint if hint else ''} "
                              f"(known: {', '.join(sorted(known))})")


def check_option_keys(opt: Mapping[str, Any], *, host: Optional[BasicSRHost] = None,
                      warn: Optional[Callable[[str], None]] = None) -> None:
    """Report option keys that nothing reads, each with a did-you-mean when one is close.

    Errors (:class:`OptionError`) where the plugin's code reads the section: the ``train`` / ``val``
    sections of a model type declaring ``TRAIN_OPTIONS`` / ``VAL_OPTIONS`` (the plugin's models), the
    options of a dataset type declaring ``OPTIONS`` (the plugin's datasets, plus BasicSR's dataloader
    keys), ``datasets`` phases BasicSR does not know, and top-level keys close to a known one
    (``netwrok_g``). Warnings (``warn``, default :func:`warnings.warn` with :class:`OptionWarning`)
    where BasicSR itself allows extra keys: other top-level keys of a run of the plugin's models,
    ``logger`` and ``path`` keys.
    """
    host = host or current_host()
    if warn is None:
        def warn(message: str) -> None:
            warnings.warn(message, OptionWarning, stacklevel=3)
    model = host.find(MODEL, opt.get("model_type"))
    plugin_model = hasattr(model, "TRAIN_OPTIONS")
    top_known = sorted(BASICSR_TOP_LEVEL | {"network_g"})
    for key in opt:
        if key in BASICSR_TOP_LEVEL or str(key).startswith("network_"):
            continue
        hint = _hint(key, top_known, cutoff=0.8)
        if hint:
            raise OptionError(str(key), f"unknown top-level option; {hint}")
        if plugin_model:
            warn(f"{key}: top-level option that neither BasicSR nor {opt.get('model_type')} reads (ignored)")
    if plugin_model:
        if "network_g" not in opt:
            raise OptionError("network_g", f"missing: {opt.get('model_type')} trains `network_g`")
        _unknown_keys(opt.get("train"), model.TRAIN_OPTIONS, "train", f"{opt.get('model_type')} (with basicsr.train)")
        _unknown_keys(opt.get("val"), model.VAL_OPTIONS, "val", f"{opt.get('model_type')} (with basicsr.train)")
    elif isinstance(opt.get("train"), Mapping) and opt["train"].get("amp") not in (None, False):
        warn(f"train.amp: {opt.get('model_type')} does not read it and trains in float32; mixed precision is "
             f"ConStyleSRModel's (model_type: ConStyleSRModel trains a bare backbone too)")
    datasets = opt.get("datasets")
    if isinstance(datasets, Mapping):
        for phase, dataset in datasets.items():
            key = join_keys("datasets", str(phase))
            if opt.get("is_train") and phase != "train" and str(phase).split("_")[0] != "val":
                hint = _hint(phase, ["train", "val"])
                raise OptionError(key, f"BasicSR trains on `train` and validates on `val` / `val_<n>` datasets; "
                                       f"{hint or 'rename this phase'}")
            if not isinstance(dataset, Mapping):
                continue
            cls = host.find(DATASET, dataset.get("type"))
            own = getattr(cls, "OPTIONS", None)
            if own is not None:
                _unknown_keys(dataset, own | BASICSR_DATALOADER, key,
                              f"{dataset.get('type')} (or BasicSR's dataloader)")
    for section, known in (("logger", BASICSR_LOGGER), ("path", BASICSR_PATH)):
        values = opt.get(section)
        if not isinstance(values, Mapping):
            continue
        for key in values:
            if key in known or (section == "path" and str(key).startswith(_BASICSR_PATH_PREFIXES)):
                continue
            hint = _hint(key, sorted(known | {p + "g" for p in _BASICSR_PATH_PREFIXES} if section == "path" else known))
            warn(f"{section}.{key}: BasicSR does not read this option (ignored){'; ' + hint if hint else ''}")


def _number(opt: Mapping[str, Any], keys: Sequence[str], minimum: int, why: str) -> None:
    node: Any = opt
    for k in keys:
        node = node.get(k) if isinstance(node, Mapping) else None
    key = ".".join(keys)
    if node is None:
        raise OptionError(key, f"missing: {why}")
    try:
        value = float(node)
    except (TypeError, ValueError):
        value = None
    if value is None or isinstance(node, bool) or value != int(value) or value < minimum:
        raise OptionError(key, f"{node!r}: expected a whole number >= {minimum} ({why})")


def check_training_numbers(opt: Mapping[str, Any]) -> None:
    """The numbers a training run cannot do without, checked before anything is built: a positive
    ``train.total_iter`` (0 or less trains nothing, and BasicSR would still save the untrained network
    as ``net_g_latest.pth``), ``datasets.train`` with a positive ``batch_size_per_gpu``, and the
    logging / checkpoint / validation intervals BasicSR divides by."""
    _number(opt, ("train", "total_iter"), 1, "a run of fewer than 1 iteration trains nothing")
    if not isinstance((opt.get("datasets") or {}).get("train"), Mapping):
        raise OptionError("datasets.train", "missing: training needs a `train` dataset")
    _number(opt, ("datasets", "train", "batch_size_per_gpu"), 1, "the training batch per GPU (or per CPU process)")
    _number(opt, ("datasets", "train", "num_worker_per_gpu"), 0,
            "data loading processes per GPU; 0 loads in the main one")
    _number(opt, ("logger", "print_freq"), 1, "iterations between log lines")
    _number(opt, ("logger", "save_checkpoint_freq"), 1, "iterations between checkpoints")
    if opt.get("val") is not None and any(str(p).startswith("val") for p in opt.get("datasets") or {}):
        _number(opt, ("val", "val_freq"), 1, "iterations between validations")


def check_options(opt: Mapping[str, Any], *, resuming: bool = False, host: Optional[BasicSRHost] = None,
                  warn: Optional[Callable[[str], None]] = None) -> None:
    """Check a parsed BasicSR options dict before training / testing starts.

    Checks the model type, option keys that nothing reads (:func:`check_option_keys`; ``warn``
    receives the warnings), every ``network_*`` (type known; for ``ConStyleUNet``: backbone type,
    prompter file, inject targets, stage module names), the datasets (type known, data folders
    present), ``path.pretrain_network_*`` files (unless resuming), for a training run the numbers
    of :func:`check_training_numbers` and, for the plugin's models, the optimiser type. Names are
    looked up the way ``host`` (default: the basicsr importable here) looks them up. Raises
    :class:`OptionError` naming the first bad option.
    """
    import torch

    host = host or current_host()
    model_type = opt.get("model_type")
    try:
        found_model = host.find(MODEL, model_type)
    except ImportError as exc:  # a fork asked for a model that needs PyPI BasicSR
        raise OptionError("model_type", str(exc)) from None
    if found_model is None:
        raise OptionError("model_type", host.unknown(MODEL, model_type))
    check_option_keys(opt, host=host, warn=warn)
    if opt.get("is_train"):
        check_training_numbers(opt)
    if model_type == "ConStyleV2PretrainModel" and (opt.get("network_g") or {}).get("type") != "ConStyleMoCo":
        raise OptionError("network_g.type", "ConStyleV2PretrainModel trains a ConStyleMoCo (stage 1); "
                                            f"got {(opt.get('network_g') or {}).get('type')!r}")
    for key in [k for k in opt if k.startswith("network_")]:
        net = opt[key]
        if not isinstance(net, Mapping) or "type" not in net:
            raise OptionError(key, "expected a network dict with a `type`")
        if host.find(ARCH, net["type"]) is None:
            raise OptionError(join_keys(key, "type"), host.unknown(ARCH, net["type"]))
        if net["type"] == "ConStyleUNet":
            check_network_options(net, key, host=host)
            continue
        check_call_options(host.find(ARCH, net["type"]), net, key, str(net["type"]))
        if net["type"] in ("ConStyleV2", "ConStyleMoCo") and net.get("pretrained") is not None:
            check_file(join_keys(key, "pretrained"), net["pretrained"], "checkpoint")

    for phase, dataset in (opt.get("datasets") or {}).items():
        key = join_keys("datasets", phase)
        if not isinstance(dataset, Mapping) or "type" not in dataset:
            raise OptionError(key, "expected a dataset dict with a `type`")
        if host.find(DATASET, dataset["type"]) is None:
            raise OptionError(join_keys(key, "type"), host.unknown(DATASET, dataset["type"]))
        _check_dataset_values(dataset, key)
        special = _SAMPLE_ROOTS.get(dataset["type"])
        for name, value in dataset.items():
            if not (name.startswith("dataroot") or name == "meta_info_file") or value is None:
                continue
            if special and name == special[0] and value == special[1]:
                continue
            if not isinstance(value, (str, os.PathLike)) or not os.path.exists(os.path.expanduser(str(value))):
                raise OptionError(join_keys(key, name), f"not found: {value!r} (relative paths are "
                                                    f"relative to the current folder, {os.getcwd()})")
        _check_layout(host.find(DATASET, dataset["type"]), dataset, key)

    if not resuming:
        for name, value in (opt.get("path") or {}).items():
            if name.startswith("pretrain_network") and value is not None:
                check_file(join_keys("path", name), value, "checkpoint")

    if model_type in ("ConStyleSRModel", "ConStyleV2PretrainModel") and opt.get("is_train"):
        train = opt.get("train") or {}
        for name in ("optim_g", "scheduler"):
            if not isinstance(train.get(name), Mapping) or "type" not in train[name]:
                raise OptionError(join_keys("train", name), f"missing: {model_type} needs a dict with a `type`")
        for name, value in train.items():
            if name.startswith("optim_") and isinstance(value, Mapping):
                optim = value.get("type")
                if not isinstance(getattr(torch.optim, str(optim), None), type):
                    raise OptionError(join_keys("train", name, "type"), f"{optim!r} is not an optimiser of torch.optim")
                check_call_options(getattr(torch.optim, optim), value, join_keys("train", name), optim, positional=1)
        _check_scheduler(train["scheduler"])
        for name in ("pixel_opt", "perceptual_opt"):
            loss = train.get(name)
            if isinstance(loss, Mapping):
                found = host.find(LOSS, loss.get("type"))
                if found is None:
                    raise OptionError(join_keys("train", name, "type"), host.unknown(LOSS, loss.get("type")))
                check_call_options(found, loss, join_keys("train", name), str(loss["type"]))


def _check_layout(cls: Any, dataset: Mapping[str, Any], key: str) -> None:
    """The data layout of a dataset type declaring ``check_layout`` (the all-in-one benchmark datasets:
    folders, pairs, list files), checked before BasicSR makes the run's folders: the datasets themselves
    are built after them."""
    check = getattr(cls, "check_layout", None)
    if check is None:
        return
    from ...errors import LayoutError

    try:
        check(dataset)
    except OptionError as exc:
        raise OptionError(join_keys(key, exc.key), exc.message) from None
    except LayoutError as exc:
        raise OptionError(join_keys(key, "dataroot"), str(exc)) from None


def _check_dataset_values(dataset: Mapping[str, Any], key: str) -> None:
    """Sample-photo names exist; paired folders (``dataroot_gt`` / ``dataroot_lq``, no meta file) hold
    as many files each, as BasicSR's pairing asserts."""
    photos = dataset.get("photos")
    if photos is not None:
        from ...data.samples import SAMPLE_NAMES

        for i, name in enumerate([photos] if isinstance(photos, str) else list(photos)):
            if name not in SAMPLE_NAMES:
                hint = did_you_mean(name, SAMPLE_NAMES)
                raise OptionError(join_keys(key, f"photos[{i}]"), f"{name!r} is not a sample photo"
                                  f"{'; ' + hint if hint else ''} (available: {', '.join(SAMPLE_NAMES)})")
    gt, lq = dataset.get("dataroot_gt"), dataset.get("dataroot_lq")
    if (isinstance(gt, str) and isinstance(lq, str) and not dataset.get("meta_info_file")
            and os.path.isdir(gt) and os.path.isdir(lq)):
        counts = [sum(1 for e in os.scandir(folder) if e.is_file()) for folder in (gt, lq)]
        if counts[0] != counts[1]:
            raise OptionError(join_keys(key, "dataroot_lq"), f"{lq!r} holds {counts[1]} files but dataroot_gt {gt!r} "
                                                         f"holds {counts[0]}; paired folders need one file per pair")


def check_call_options(target: Callable, options: Mapping[str, Any], key: str, what: str,
                       positional: int = 0) -> None:
    """OptionError for a key of ``options`` (besides ``type``) that ``target`` does not take as an
    argument (a class's ``__init__`` or a function; the first ``positional`` arguments are passed by
    the trainer). Targets taking ``**kwargs`` accept anything."""
    import inspect

    try:
        params = list(inspect.signature(target).parameters.values())
    except (TypeError, ValueError):
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return
    names = [p.name for p in params if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                   inspect.Parameter.KEYWORD_ONLY)][positional:]
    for name in options:
        if name != "type" and name not in names:
            hint = _hint(name, names)
            raise OptionError(join_keys(key, str(name)), f"not an argument of {what}{'; ' + hint if hint else ''} "
                                                     f"(arguments: {', '.join(names)})")


_SCHEDULERS = {"MultiStepLR": "MultiStepRestartLR", "MultiStepRestartLR": "MultiStepRestartLR",
               "CosineAnnealingRestartLR": "CosineAnnealingRestartLR"}  # BaseModel.setup_schedulers


def _check_scheduler(scheduler: Mapping[str, Any]) -> None:
    kind = scheduler.get("type")
    if kind not in _SCHEDULERS:
        hint = _hint(kind, sorted(_SCHEDULERS))
        raise OptionError("train.scheduler.type", f"{kind!r} is not a scheduler BasicSR's BaseModel builds"
                                                  f"{'; ' + hint if hint else ''} "
                                                  f"(known: {', '.join(sorted(_SCHEDULERS))})")
    try:
        from basicsr.models import lr_scheduler
    except ImportError:
        return
    check_call_options(getattr(lr_scheduler, _SCHEDULERS[kind]), scheduler, "train.scheduler", str(kind),
                       positional=1)
    for name in ("periods", "restart_weights", "milestones"):
        value = scheduler.get(name)
        if name in scheduler and not isinstance(value, (list, tuple)):
            raise OptionError(join_keys("train.scheduler", name), f"expected a list, e.g. [{value}], got {value!r}")
