"""MMEngine registration does not depend on which of the plugin's modules a program imports first.

README ("Checkpoints") tells users to call
``constyle_plugin.integrations.mmengine.mmengine_checkpoint_globals()``; a script that imports that
module (or ``mmengine_runner``) before anything else must still find the plugin's models in MMEngine's
registries. Each case is a fresh interpreter, with warnings turned into errors.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

FIRST_IMPORTS = {
    "constyle_plugin": "import constyle_plugin; import mmengine",
    "mmengine_then_plugin": "import mmengine; import constyle_plugin",
    "integrations.mmengine": "import constyle_plugin.integrations.mmengine",
    "integrations.mmengine.runner": "from constyle_plugin.integrations.mmengine.runner import ConStyleRunner",
    "inference_then_runner": "import constyle_plugin.tools.restore; "
                             "from constyle_plugin.integrations.mmengine.runner import load_config",
}


@pytest.mark.parametrize("case", sorted(FIRST_IMPORTS))
def test_mmengine_registration_whatever_is_imported_first(case):
    code = (FIRST_IMPORTS[case] + "\nfrom mmengine.registry import MODELS, DATASETS, METRICS\n"
            "assert MODELS.get('constyle.ConStyleRestorer') is not None, 'ConStyleRestorer not registered'\n"
            "assert DATASETS.get('constyle.MixDegradationDataset') is not None\n"
            "assert METRICS.get('constyle.PSNR') is not None\n")
    proc = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-c", code], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]


BASICSR_FIRST_IMPORTS = {
    "datasets": "import constyle_plugin.data.datasets",
    "basicsr_models": "import constyle_plugin.integrations.basicsr.models",
    "degradations_then_basicsr": "import constyle_plugin.data.degradations; import basicsr",
}


@pytest.mark.parametrize("case", sorted(BASICSR_FIRST_IMPORTS))
def test_basicsr_registration_whatever_is_imported_first(case):
    """A plugin module that imports basicsr itself: registration waits until that module is complete
    (it registers the module's own classes)."""
    code = (BASICSR_FIRST_IMPORTS[case] + "\nfrom basicsr.utils.registry import ARCH_REGISTRY, DATASET_REGISTRY, "
            "MODEL_REGISTRY\n"
            "assert 'MixDegradationDataset' in DATASET_REGISTRY, 'MixDegradationDataset not registered'\n"
            "assert 'ConStyleSRModel' in MODEL_REGISTRY, 'ConStyleSRModel not registered'\n"
            "assert 'ConStyleUNet' in ARCH_REGISTRY\n")
    proc = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-c", code], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
