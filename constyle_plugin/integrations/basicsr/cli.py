"""The ``basicsr`` command: ``basicsr train -opt X.yml [...]`` and ``basicsr test -opt X.yml [...]``.

It imports the plugin (so its registry entries exist), then runs BasicSR's own
``basicsr.train.train_pipeline`` / ``basicsr.test.test_pipeline`` with the current folder as the root
(``experiments/``, ``results/``, ``tb_logger/`` are created there). Every flag after the command is
BasicSR's own and reaches its parser unchanged: ``-opt``, ``--launcher``, ``--auto_resume``,
``--debug``, ``--local_rank``, ``--force_yml key:sub=value ...``.

For the duration of the run, and nowhere else, a few of basicsr 1.4.2's functions are wrapped
(:class:`RunFixes`; each replaced function's signature is checked first, :mod:`constyle_plugin.patches`; what the
plugin's own model classes can do is theirs, :mod:`.models`):

- the command line and options are checked before anything is built or created on disk
  (:func:`check_command_line`: the ``-opt`` file, its YAML, each ``--force_yml`` item;
  :func:`~.basicsr.check_options`: a bad option fails with its key, e.g. ``network_g.backbone.type``;
  a key that the plugin's models / datasets do not read is an error with a did-you-mean, one where
  BasicSR allows extra keys a warning; ``train.total_iter`` < 1 is refused; a model class's own
  ``check_train_options``, e.g. ``train.amp`` of ``ConStyleSRModel``), and the plugin's datasets
  that use the offline sample photos get ``sample_dir`` = ``<experiment or results folder>/sample_photos``;
- a training set that gives no batch (``batch_size_per_gpu`` larger than the dataset: BasicSR drops
  the last partial batch) is refused once the dataset is built; the folders this run made are then
  removed, and an earlier run's folder that BasicSR archived gets its name back;
- ``load_resume_state``: BasicSR maps the state onto ``torch.cuda.current_device()`` (fails without
  CUDA) and calls ``torch.load`` with the default ``weights_only``; here the run's own ``.state``
  file is read onto the CPU (or the current GPU when training on one) with ``weights_only=True`` and
  only the classes a BasicSR scheduler state needs (``collections.Counter``) allowed; ``--auto_resume``
  takes the newest state that loads together with its networks, and says which files it skipped and
  why; an explicit ``path.resume_state`` that does not load is an error naming the file;
- every other ``torch.load`` of the run that does not pass ``weights_only`` (BasicSR's
  ``load_network`` for ``pretrain_network_g`` and ``basicsr test``) loads with
  ``weights_only=True`` whatever the torch version (:mod:`constyle_plugin.safe_loading`);
- exact resumption: BasicSR restarts the interrupted epoch from its first batch and does not
  save random generator states, so a resumed run sees other data than an uninterrupted one. Here
  each checkpoint also saves the Python / NumPy / torch generator states
  (``training_states/<iter>.rank<r>.rng``, with where the epoch stood in samples), and the resumed
  epoch skips the samples already trained on (as many samples, when the batch size changed), then
  restores the generators just before its first batch. A resume at or past ``train.total_iter`` is
  refused (it would end at once); a resume refused for a changed network names only the
  ``--force_yml`` entries that differ from the run's own. With
  ``num_worker_per_gpu: 0`` the resumed run's losses equal an uninterrupted run's; with workers,
  the data order is the same but workers' random augmentations are re-seeded;
- validation leaves the global random generators as it found them, so ``val_freq`` does not
  change the training trajectory;
- checkpoints are written atomically (:func:`atomic_torch_save`: temporary file, fsync, rename), so
  a run killed while saving keeps its previous checkpoints and ``--auto_resume`` picks the last
  complete state;
- ``--launcher pytorch`` without CUDA: the command sets up the process group with gloo itself and
  BasicSR's parser sees ``--launcher none`` (its ``init_dist`` sets a CUDA device and asks for NCCL);
  the plugin's model classes wrap DistributedDataParallel on the CPU themselves;
- SIGINT / SIGTERM (``basicsr train``): the model's ``optimize_parameters`` finishes the current
  iteration, the state after it is saved as a scheduled checkpoint is (networks, training state,
  generator states, atomically; all ranks stop after the same iteration), and the command says where
  and how to resume (``--auto_resume``) and exits 130 / 143; a second Ctrl-C stops at once
  (:mod:`constyle_plugin.interrupt`). Data-loader workers ignore both signals.
"""
from __future__ import annotations

import contextlib
import os
import sys
from os import path as osp
from typing import Optional, Sequence


from ...patches import HostChanged
from ...interrupt import StopSignals, TrainingStopped, signal_name
from .registry import (ForkHost, OptionError, current_host, format_registration_report, register_here,
                       registration_report)
from .command_line import check_command_line, prepare_options
from .resume import capture_rng, load_state_file, restore_rng
from .run_fixes import RunFixes, atomic_torch_save

__all__ = ["RunFixes", "atomic_torch_save", "capture_rng", "check_command_line", "load_state_file", "main",
           "prepare_options", "restore_rng"]

USAGE = """usage: basicsr {train,test} -opt OPTIONS.yml [--launcher {none,pytorch,slurm}] [--auto_resume]
                  [--debug] [--local_rank N] [--force_yml key:sub=value [key:sub=value ...]]

Runs BasicSR's own training or test pipeline with the constyle-plugin registered
(ConStyleUNet, ConStyleV2, NAFNet/Restormer/ConvUNet where absent, ConStyleV2PretrainModel,
ConStyleSRModel, the stage-1 losses and the plugin's datasets). Experiments are written under
./experiments, test results under ./results. `basicsr train -h` shows BasicSR's own flags.

Inside a 1.2-era BasicSR fork (NAFNet, Restormer: a `basicsr` package without registries), it
runs the fork's own basicsr/train.py or basicsr/test.py with the plugin's names findable there;
--force_yml works there too, and the fork resumes by itself from its newest state."""


# ------------------------------------------------------------------------------------------------
# Entry point
# ------------------------------------------------------------------------------------------------
def main(argv: Optional[Sequence[str]] = None) -> int:
    """``basicsr {train,test} -opt X.yml [BasicSR flags]``; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command not in ("train", "test"):
        print(f"basicsr: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        return 2

    try:
        host = current_host()
    except ImportError as exc:
        print(f"basicsr {command}: no usable basicsr here ({exc}). Install BasicSR with "
              f"pip install 'constyle-plugin[basicsr]', or run inside a BasicSR fork installed with its "
              f"`python setup.py develop`.", file=sys.stderr)
        return 2
    register_here()
    print(f"basicsr {command}: {format_registration_report(registration_report())}", file=sys.stderr, flush=True)
    if command == "train":
        from ...threads import pick_torch_threads

        note = pick_torch_threads()
        if note:
            print(f"basicsr {command}: {note}", file=sys.stderr, flush=True)
    stop: Optional[StopSignals] = None
    user_args = list(rest)
    if isinstance(host, ForkHost):
        from .fork import prepare_fork_run

        try:
            argv0, rest, fixes, pipeline = prepare_fork_run(command, rest)
        except OptionError as exc:
            print(f"basicsr {command}: {exc}", file=sys.stderr)
            return 2
    else:
        import basicsr.test
        import basicsr.train

        root = os.getcwd()
        stop = StopSignals(f"basicsr {command}") if command == "train" else None
        argv0, fixes = f"basicsr {command}", RunFixes(command, stop=stop)
        run = basicsr.train.train_pipeline if command == "train" else basicsr.test.test_pipeline

        def pipeline() -> None:
            run(root)

    saved_argv = sys.argv
    sys.argv = [argv0, *rest]
    try:
        with stop if stop is not None else contextlib.nullcontext(), fixes:
            pipeline()
    except OptionError as exc:
        print(f"basicsr {command}: error in the options: {exc}", file=sys.stderr)
        return 2
    except HostChanged as exc:
        print(f"basicsr {command}: {exc}", file=sys.stderr)
        return 2
    except TrainingStopped as exc:
        print(_stopped_message(command, exc, user_args), file=sys.stderr, flush=True)
        return exc.exit_code
    except KeyboardInterrupt:
        if stop is None or stop.signum is None:
            raise
        print(f"basicsr {command}: stopped at once by a second Ctrl-C; nothing was saved after the last "
              f"checkpoint", file=sys.stderr, flush=True)
        return 130
    finally:
        sys.argv = saved_argv
    if stop is not None and stop.signum is not None:  # the signal came after the last iteration
        print(f"basicsr {command}: {signal_name(stop.signum)} received after the last iteration; the run finished "
              f"and saved its final networks", file=sys.stderr, flush=True)
        return 128 + stop.signum
    return 0


def _stopped_message(command: str, exc: TrainingStopped, args: Sequence[str]) -> str:
    import shlex

    again = list(args) if "--auto_resume" in args else [*args, "--auto_resume"]
    saved = ", ".join(osp.relpath(p) for p in exc.saved)
    return (f"basicsr {command}: stopped by {signal_name(exc.signum)} after iteration {exc.iteration}; saved "
            f"{saved}. Resume with: basicsr {command} {shlex.join(again)}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
