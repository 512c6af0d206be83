"""Test-suite set-up shared by every folder.

The helper modules (``unets``, ``payloads``, ``processes``, ``basicsr_runs``, ``cli_runs``) live in
``tests/`` and are imported by name from any sub-folder: ``tests/`` goes on ``sys.path`` here, whatever
pytest's rootdir or import mode. The expensive inputs that several folders share (the sample photos,
a prompter file, a tiny MMEngine run, a BasicSR experiment layout) are session fixtures: built once
per test process (once per worker under ``pytest -n``), each in its own temporary folder.
"""
from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path

# One OpenMP / MKL thread per process, in this process and in every interpreter a test starts (they
# inherit the environment): the networks are tiny, and on a small machine two test workers (pytest -n 2)
# each spinning several threads, plus their subprocesses, would oversubscribe the cores many times over.
# An explicit setting in the environment wins.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from cli_runs import MMENGINE_CONFIG, TINY, TINY_BASICSR, constyle  # noqa: E402


def pytest_configure(config) -> None:
    """In the controlling process, before pytest-xdist starts its workers: let yapf (imported by MMEngine's
    config module) write its grammar cache once. yapf rewrites the cache when its Grammar.txt is newer
    (every fresh venv) and renames the file into place before the data is flushed, so two workers importing
    MMEngine at the same moment can read a truncated pickle (EOFError at collection)."""
    if hasattr(config, "workerinput"):  # a worker: the controller has written the cache already
        return
    try:
        import yapf  # noqa: F401  (as mmengine.config imports it)
    except ImportError:  # no MMEngine (and no yapf) in this environment
        pass


@pytest.fixture(autouse=True)
def _fresh_mmengine_loggers():
    """Each test starts without the MMEngine loggers of the tests before it.

    MMEngine keeps every ``MMLogger`` it makes for the life of the process and logs through the newest
    (``print_log(..., logger='current')``). A logger made while one test's output was captured writes to
    that test's closed stream afterwards: in whichever test runs next in the same process ("--- Logging
    error ---" in its stderr), which depends on the order tests run in (``pytest -n`` changes it)."""
    yield
    logger_module = sys.modules.get("mmengine.logging.logger")
    if logger_module is None:
        return
    instances = logger_module.MMLogger._instance_dict
    for logger in list(instances.values()):
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
            if isinstance(handler, logging.FileHandler):
                handler.close()
    instances.clear()


@pytest.fixture
def four_threads():
    """torch set to 4 threads for the test (the thread-choice tests start from a known count)."""
    before = torch.get_num_threads()
    torch.set_num_threads(4)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def photos(tmp_path_factory) -> Path:
    from constyle_plugin.data.samples import export_sample_photos

    folder = tmp_path_factory.mktemp("sample_photos")
    export_sample_photos(folder)
    return folder


@pytest.fixture(scope="session")
def prompter_file(tmp_path_factory) -> Path:
    from constyle_plugin import ConStyleV2

    torch.manual_seed(5)
    return ConStyleV2().freeze().save_pretrained(tmp_path_factory.mktemp("prompter") / "prompter.safetensors")



@pytest.fixture(scope="session")
def mmengine_run(tmp_path_factory):
    """``constyle train --resume`` of a tiny run in an empty work dir, with ``num_workers=0``."""
    tmp = tmp_path_factory.mktemp("mmengine_run")
    work = tmp / "work"
    proc = constyle("train", str(MMENGINE_CONFIG), "--work-dir", str(work), "--resume", "--cfg-options", *TINY,
                    cwd=tmp)
    return work, proc


@pytest.fixture(scope="session")
def mmengine_checkpoint(mmengine_run) -> Path:
    work, proc = mmengine_run
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return work / "iter_2.pth"


@pytest.fixture(scope="session")
def basicsr_experiment(tmp_path_factory) -> Path:
    """``experiments/Tiny/`` laid out as BasicSR leaves it: the options copy (with BasicSR's header)
    beside ``models/net_g_latest.pth``; the weights are random, so loading them is visible."""
    from constyle_plugin.compat import ensure_basicsr_importable

    ensure_basicsr_importable()
    import yaml
    from basicsr.archs import build_network

    exp = tmp_path_factory.mktemp("experiments") / "Tiny"
    (exp / "models").mkdir(parents=True)
    (exp / "Tiny.yml").write_text(TINY_BASICSR)
    torch.manual_seed(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = build_network(dict(yaml.safe_load(TINY_BASICSR)["network_g"]))
    state = {k: torch.randn_like(v) if v.is_floating_point() and not k.startswith("prompter.") else v
             for k, v in net.state_dict().items()}
    torch.save({"params": state}, exp / "models" / "net_g_latest.pth")
    return exp
