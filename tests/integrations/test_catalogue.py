"""The catalogue of registered entries (``constyle_plugin.integrations.catalogue``): one table both trainers'
registries read, resolved lazily."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from constyle_plugin.integrations import catalogue


def test_importing_the_catalogue_imports_nothing_else_of_the_package_nor_a_trainer():
    code = ("import sys\nimport constyle_plugin.integrations.catalogue as c\n"
            "before = set(sys.modules)\nc.names('datasets'); c.entries('archs'); c.entry('losses', 'InfoNCELoss')\n"
            "assert set(sys.modules) == before, sorted(set(sys.modules) - before)\n"
            "for m in ('basicsr', 'mmengine', 'constyle_plugin.archs', 'constyle_plugin.data.datasets',\n"
            "          'constyle_plugin.training.losses', 'constyle_plugin.integrations.basicsr'):\n"
            "    assert m not in sys.modules, m\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


def test_every_entry_resolves_to_an_object_of_its_name():
    for kind in catalogue.KINDS:
        assert catalogue.names(kind), kind
        for item in catalogue.entries(kind):
            obj = item.load()
            assert obj is catalogue.resolve(kind, item.name)
            assert getattr(obj, "__name__", None) == item.name, (kind, item.name, obj)


def test_a_name_is_in_one_kind_only_per_trainer_and_kinds_are_the_typed_ones():
    assert set(catalogue.CATALOGUE) == set(catalogue.KINDS)
    for trainer in ("basicsr", "mmengine"):
        kinds = [k for k in catalogue.KINDS if not k.startswith(("basicsr_", "mmengine_")) or k.startswith(trainer)]
        seen = [n for k in kinds for n in catalogue.names(k)]
        assert len(seen) == len(set(seen)), (trainer, sorted(n for n in seen if seen.count(n) > 1))


def test_unknown_kind_or_name_is_a_key_error_naming_what_there_is():
    with pytest.raises(KeyError, match="kinds: archs"):
        catalogue.entries("arch")
    with pytest.raises(KeyError, match="no datasets entry 'MixDataset'.*MixDegradationDataset"):
        catalogue.resolve("datasets", "MixDataset")


def test_pixel_losses_fall_back_to_torch_where_basicsr_does_not_import(monkeypatch):
    monkeypatch.setitem(sys.modules, "basicsr.losses.basic_loss", None)  # importing it raises ImportError
    assert catalogue.resolve("mmengine_losses", "L1Loss") is torch.nn.L1Loss
    assert catalogue.resolve("mmengine_losses", "MSELoss") is torch.nn.MSELoss
    with pytest.raises(ImportError):
        catalogue.resolve("mmengine_losses", "CharbonnierLoss")  # no fallback: the registry leaves it out
    monkeypatch.undo()
    assert catalogue.resolve("mmengine_losses", "L1Loss").__module__ == "basicsr.losses.basic_loss"


def test_every_kind_is_read_by_a_registry():
    from constyle_plugin.integrations.basicsr import registry as bsr
    from constyle_plugin.integrations.mmengine import registry as mme

    read = {k for kinds in (*bsr.KINDS.values(), *mme.KINDS.values()) for k in kinds}
    assert read == set(catalogue.KINDS)
    shared = {"archs", "losses", "datasets"}
    assert shared <= {k for kinds in bsr.KINDS.values() for k in kinds}
    assert shared <= {k for kinds in mme.KINDS.values() for k in kinds}
