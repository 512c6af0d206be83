"""The MMEngine twin of BasicSR's ``train: amp: bf16``: ``options/mmengine/nafnet_constyle_amp.py`` is the
authors' config with an ``AmpOptimWrapper`` (bf16) and nothing else changed; without a GPU, ``constyle train``
refuses it in one line before the work dir exists (MMEngine would assert only after building the runner)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("mmengine")

from constyle_plugin import cli  # noqa: E402
from constyle_plugin.integrations.mmengine.runner import check_config, load_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[3]
CUDA = torch.cuda.is_available()


def test_the_amp_config_is_the_authors_config_with_a_bf16_amp_optim_wrapper():
    cfg = load_config(str(ROOT / "options" / "mmengine" / "nafnet_constyle_amp.py"))
    base = load_config(str(ROOT / "options" / "mmengine" / "nafnet_constyle.py"))
    assert cfg.optim_wrapper.type == "AmpOptimWrapper" and cfg.optim_wrapper.dtype == "bfloat16"
    assert cfg.optim_wrapper.constructor == base.optim_wrapper.constructor  # only trainable parameters
    assert cfg.optim_wrapper.optimizer == base.optim_wrapper.optimizer
    assert cfg.model == base.model
    check_config(cfg)


@pytest.mark.skipif(CUDA, reason="the refusal is for machines without a GPU")
def test_without_a_gpu_the_amp_config_is_refused_in_one_line_before_the_work_dir_exists(tmp_path, capsys):
    from mmengine.optim import AmpOptimWrapper

    with pytest.raises(AssertionError, match="only available"):  # what MMEngine itself would do, later
        AmpOptimWrapper(optimizer=torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1), dtype="bfloat16")
    work = tmp_path / "work"
    code = cli.main(["train", str(ROOT / "options" / "mmengine" / "nafnet_constyle_amp.py"), "--work-dir", str(work)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "optim_wrapper.type: AmpOptimWrapper" in err and "needs a GPU" in err
    assert not work.exists()
