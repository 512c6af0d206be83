"""The MMEngine registry reads the catalogue (``integrations/catalogue.py``) and nothing else: every
catalogue entry of the kinds it reads is what the ``constyle`` scope holds under that name (for the core
datasets, their keyword adapter), and everything in the scope's registries is a catalogue entry. The
keyword datasets are one generic adapter of the core classes, not classes of their own."""
from __future__ import annotations

import pytest

pytest.importorskip("mmengine")

from constyle_plugin.integrations import catalogue  # noqa: E402
from constyle_plugin.integrations.mmengine import data as mm_data  # noqa: E402
from constyle_plugin.integrations.mmengine import registry as mme  # noqa: E402
from constyle_plugin.integrations.mmengine.data import KeywordDataset  # noqa: E402
from constyle_plugin.integrations.mmengine.scope import REGISTRIES  # noqa: E402

TARGETS = {"models": "MODELS", "datasets": "DATASETS", "metrics": "METRICS", "hooks": "HOOKS", "runners": "RUNNERS",
           "optim_wrapper_constructors": "OPTIM_WRAPPER_CONSTRUCTORS"}


def test_every_catalogue_entry_is_what_the_scope_holds_under_its_name():
    mme.register()
    assert set(mme.KINDS) == set(TARGETS)
    for registry, kinds in mme.KINDS.items():
        scope = REGISTRIES[TARGETS[registry]]
        for item in (i for k in kinds for i in catalogue.entries(k)):
            found = scope.module_dict.get(item.name)
            if item.kind == "datasets":  # MMEngine gets the keyword adapter of the core class
                assert issubclass(found, KeywordDataset) and found.__name__ == item.name, item.name
                assert found.core_class() is item.load(), item.name
            else:
                assert found is item.load(), (registry, item.name)


def test_everything_in_the_scope_is_a_catalogue_entry():
    # what the plugin's own modules put in the scope (tests may register helpers of their own there)
    def ours(module_dict):
        return {n for n, obj in module_dict.items() if getattr(obj, "__module__", "").startswith("constyle_plugin")}

    mme.register()
    for registry, kinds in mme.KINDS.items():
        held = REGISTRIES[TARGETS[registry]].module_dict
        named = {n for k in kinds for n in catalogue.names(k)}
        assert named <= set(held), (registry, sorted(named - set(held)))
        assert ours(held) <= named, (registry, sorted(ours(held) - named))
    others = set(REGISTRIES) - set(TARGETS.values())
    assert not [name for name in others if ours(REGISTRIES[name].module_dict)], "entries outside the catalogue's registries"


def test_entries_follow_the_catalogue_order_and_kinds():
    listed = {registry: [n for n, _ in items] for registry, items in mme.entries().items()}
    assert listed == {registry: [n for k in kinds for n in catalogue.names(k)] for registry, kinds in mme.KINDS.items()}


def test_a_catalogue_dataset_without_an_adapter_is_refused(monkeypatch):
    table = {k: dict(v) for k, v in catalogue.CATALOGUE.items()}
    table["datasets"]["NewDataset"] = "constyle_plugin.data.datasets:MixDegradationDataset"
    monkeypatch.setattr(catalogue, "CATALOGUE", table)
    with pytest.raises(RuntimeError, match="'NewDataset' has no MMEngine adapter"):
        mme.entries()


@pytest.mark.parametrize("name", ["MixDegradationDataset", "ConStylePretrainDataset", "AllInOneTrainDataset",
                                  "AllInOneTestDataset"])
def test_the_keyword_datasets_are_the_generic_adapter_of_the_core_classes(name):
    cls = getattr(mm_data, name)
    core = catalogue.resolve("datasets", name)
    assert cls is mm_data.ADAPTERS[name] and type(cls) is type and cls.__bases__ == (KeywordDataset,)
    assert "__init__" not in vars(cls) and "__getitem__" not in vars(cls)  # one definition: the adapter's
    assert (cls.__module__, cls.__qualname__) == ("constyle_plugin.integrations.mmengine.data", name)
    assert cls.__doc__.startswith(f":class:`{core.__module__}.{name}` for MMEngine (options as keywords)")
    # keywords of the adapter's own: the photo split of MixDegradationDataset; io_backend, which
    # ConStylePretrainDataset has always accepted here, though its core class reads no such option
    extra = {"MixDegradationDataset": {"val_fraction", "split_seed"}, "ConStylePretrainDataset": {"io_backend"}}.get(
        name, set())
    assert set(cls.OPTIONS) - extra <= core.OPTIONS  # the keywords are the core class's options
    with pytest.raises(TypeError, match=rf"^{name}: unknown option\(s\) 'no_such'"):
        cls(no_such=1)
    assert hasattr(cls, "check_layout") == hasattr(core, "check_layout")  # the all-in-one data: see below


def test_the_adapter_layout_check_is_the_core_check(tmp_path):
    from constyle_plugin.errors import LayoutError, OptionError

    for name in ("AllInOneTrainDataset", "AllInOneTestDataset"):
        opt = dict(setting="three-task", dataroot=str(tmp_path / "nothing"))
        errors = []
        for check in (getattr(mm_data, name).check_layout, catalogue.resolve("datasets", name).check_layout):
            with pytest.raises((LayoutError, OptionError)) as info:
                check(dict(opt))
            errors.append((type(info.value), str(info.value)))
        assert errors[0] == errors[1], name
