"""``constyle train --cfg-options`` values of the wrong shape for the ConStyle model: one line naming
the full key, exit code 2, and no work dir."""
from __future__ import annotations

import pytest

from cli_runs import MMENGINE_CONFIG, TINY, run_cli


@pytest.mark.parametrize("option, key, says", [
    ("model.prompter=[None]", "model.prompter", "dict(pretrained="),
    ("model.stages=[downs.0,downs.1]", "model.stages", "encoder"),
    ("model.inject=[encoder,middle]", "model.inject", "'middle'"),
    ("model.stages.encoder=[nope.0]", "model.stages.encoder", "model.stages is None in the config"),
    ("model.prompt_size=8", "model.prompt_size", "at least 16"),
])
def test_bad_model_option_is_one_line_naming_the_full_key(option, key, says, tmp_path, capsys):
    work = tmp_path / "work"
    code, _, err = run_cli(capsys, "train", str(MMENGINE_CONFIG), "--work-dir", str(work),
                           "--cfg-options", *TINY, option)
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 2, err[-3000:]
    assert len(lines) == 1 and lines[0].startswith(f"constyle train: error: {key}: "), err[-3000:]
    assert says in lines[0]
    assert not work.exists()


def test_a_stage_name_the_backbone_lacks_names_the_full_key_and_leaves_no_work_dir(tmp_path):
    from constyle_plugin.errors import ConfigError
    from constyle_plugin.integrations.mmengine import train

    options = dict(item.split("=", 1) for item in TINY)
    options = {k: eval(v) if v[:1] in "[0123456789" or v in ("True", "False") else v for k, v in options.items()}
    options["model.stages"] = {"_delete_": True, "encoder": ["encoderz.0"]}
    work = tmp_path / "work"
    with pytest.raises(ConfigError, match=r"^model\.stages\.encoder\[0\]: 'encoderz\.0' is not a module"):
        train(str(MMENGINE_CONFIG), work_dir=str(work), cfg_options=options)
    assert not work.exists()
