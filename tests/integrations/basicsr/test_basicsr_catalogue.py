"""The BasicSR registry reads the catalogue (``integrations/catalogue.py``) and nothing else: every catalogue
entry of the kinds it reads is what BasicSR's registries (and a 1.2-era fork's look-ups) find under that
name, and every plugin object in BasicSR's registries is a catalogue entry."""
from __future__ import annotations

import types

import pytest

from constyle_plugin.compat import ensure_basicsr_importable

ensure_basicsr_importable()
from basicsr.utils.registry import ARCH_REGISTRY, DATASET_REGISTRY, LOSS_REGISTRY, MODEL_REGISTRY  # noqa: E402

from constyle_plugin.integrations import catalogue  # noqa: E402
from constyle_plugin.integrations.basicsr import registry as bsr  # noqa: E402

REGISTRIES = {"ARCH": ARCH_REGISTRY, "MODEL": MODEL_REGISTRY, "LOSS": LOSS_REGISTRY, "DATASET": DATASET_REGISTRY}


def _catalogue_names(kind: str) -> list:
    return [n for k in bsr.KINDS[kind] for n in catalogue.names(k)]


def test_every_catalogue_entry_is_what_basicsr_registered_under_its_name():
    bsr.register()
    for kind, registry in REGISTRIES.items():
        for k in bsr.KINDS[kind]:
            for item in catalogue.entries(k):
                assert registry.get(item.name) is item.load(), (kind, item.name)  # the object itself, not a copy


def test_every_plugin_object_in_basicsrs_registries_is_in_the_catalogue():
    bsr.register()
    for kind, registry in REGISTRIES.items():
        ours = {name for name, obj in registry._obj_map.items()
                if getattr(obj, "__module__", "").startswith("constyle_plugin.")}
        assert ours, kind
        assert ours <= set(_catalogue_names(kind)), (kind, sorted(ours - set(_catalogue_names(kind))))


def test_the_report_names_exactly_the_catalogues_entries():
    said = bsr.registration_report()
    for kind in REGISTRIES:
        listed = said[kind]["registered"] + said[kind]["kept"] + said[kind]["unavailable"]
        assert sorted(listed) == sorted(_catalogue_names(kind)), kind


def test_a_name_added_to_the_catalogue_is_registered_with_no_other_change(monkeypatch):
    """The registry has no list of its own: a catalogue entry is all a new name needs."""
    table = {k: dict(v) for k, v in catalogue.CATALOGUE.items()}
    table["losses"]["ExtraLoss"] = "tests_extra_module:ExtraLoss"

    class ExtraLoss:  # a stand-in loss class in a module of its own
        pass

    module = types.ModuleType("tests_extra_module")
    module.ExtraLoss = ExtraLoss
    monkeypatch.setitem(__import__("sys").modules, "tests_extra_module", module)
    monkeypatch.setattr(catalogue, "CATALOGUE", table)
    monkeypatch.setattr(LOSS_REGISTRY, "_obj_map", dict(LOSS_REGISTRY._obj_map))
    report = bsr.register()
    assert report["LOSS"]["added"] == ["ExtraLoss"] and LOSS_REGISTRY.get("ExtraLoss") is ExtraLoss


def test_fork_lookup_modules_offer_the_catalogues_names():
    for kind, entries in bsr._FORK_ENTRIES.items():
        assert entries.available_names() == sorted(_catalogue_names(kind)), kind
    with pytest.raises(AttributeError):
        getattr(bsr._FORK_ENTRIES["ARCH"], "NotInTheCatalogue")
    assert bsr._FORK_ENTRIES["DATASET"].MixDegradationDataset is catalogue.resolve("datasets", "MixDegradationDataset")
    assert bsr._FORK_ENTRIES["ARCH"].ConStyleUNet is bsr._fork_unet_builder  # bound to the fork's own look-up
