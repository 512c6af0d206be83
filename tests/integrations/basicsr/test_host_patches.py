"""The ``basicsr`` command's remaining patches of the host: each checks the replaced function's
signature first and refuses in one line naming the host's version, leaving nothing replaced; with the
host as it is, every replacement is undone after the run."""
from __future__ import annotations

import types

import pytest
import torch

from constyle_plugin.errors import ConStyleError
from constyle_plugin.patches import HostChanged, Patches, host_version


def test_a_host_function_with_another_signature_is_refused_naming_the_version():
    host = types.SimpleNamespace(__name__="host", load=lambda path, strict: None)
    patches = Patches()
    with pytest.raises(HostChanged) as info:
        patches.replace(host, "load", ("path", "map_location"), lambda f: f)
    message = str(info.value)
    assert isinstance(info.value, ConStyleError)
    assert "host.load of basicsr" in message and host_version() in message
    assert "takes (path, strict)" in message and "written for (path, map_location)" in message
    patches.replace(host, "load", ("path",), lambda f: "replaced", more=True)  # others may follow
    assert host.load == "replaced"
    patches.restore()
    assert host.load("x", True) is None


def test_run_fixes_replace_only_the_commands_names_and_undo_them():
    import basicsr.test as bs_test
    import basicsr.train as bs_train
    import basicsr.utils.misc as bs_misc
    from basicsr.data import data_sampler

    from constyle_plugin.integrations.basicsr.cli import RunFixes

    before = {(m.__name__, n): getattr(m, n) for m in (bs_train, bs_test, bs_misc, data_sampler, torch)
              for n in ("parse_options", "build_model", "load_resume_state", "create_train_val_dataloader",
                        "mkdir_and_rename", "EnlargedSampler", "load") if hasattr(m, n)}
    fixes = RunFixes("test")
    with fixes:
        changed = {k for k, v in before.items() if getattr(__import__(k[0], fromlist=["_"]), k[1]) is not v}
    assert changed == {("basicsr.test", "parse_options"), ("basicsr.test", "build_model"), ("torch", "load")}
    assert all(getattr(__import__(k[0], fromlist=["_"]), k[1]) is v for k, v in before.items())


def test_run_fixes_refuse_a_changed_basicsr_and_leave_nothing_replaced(monkeypatch):
    import basicsr.train as bs_train

    from constyle_plugin.integrations.basicsr.cli import RunFixes

    monkeypatch.setattr(bs_train, "load_resume_state", lambda opt, device: None)
    parse, load = bs_train.parse_options, torch.load
    with pytest.raises(HostChanged, match=r"basicsr\.train\.load_resume_state of basicsr \S+ takes \(opt, device\)"):
        RunFixes("train").__enter__()
    assert bs_train.parse_options is parse and torch.load is load


def test_the_command_prints_one_line_for_a_changed_basicsr(monkeypatch, capsys, tmp_path):
    import basicsr.train as bs_train

    from constyle_plugin.integrations.basicsr.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(bs_train, "create_train_val_dataloader", lambda options: None)
    assert main(["train", "-opt", "missing.yml"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("basicsr train: basicsr.train.create_train_val_dataloader of basicsr ")
    assert "Traceback" not in err and not (tmp_path / "experiments").exists()
