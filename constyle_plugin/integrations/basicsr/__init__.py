"""BasicSR integration: the plugin's entries in every flavour of BasicSR (:mod:`.registry`), option
checks (:mod:`.options`), the plugin's model classes (:mod:`.models`), the fixes a run gets
(:mod:`.run_fixes`, :mod:`.resume`) and the ``basicsr`` command (:mod:`.cli`, :mod:`.command_line`,
:mod:`.fork`).

Importing this package does not import basicsr; :mod:`.models` and the command do.
See :mod:`.registry` for the three flavours and what is registered where.
"""
from .options import (OptionWarning, check_call_options, check_option_keys, check_options, check_training_numbers,
                      point_sample_datasets)
from .registry import (ARCH, DATASET, LOSS, MODEL, BasicSRHost, ForkHost, OptionError, RegistryHost, available,
                       build_constyle_unet, check_network_options, current_host, format_registration_report, register,
                       register_here, register_into, register_with_fork_module, registration_report)

__all__ = ["ARCH", "DATASET", "LOSS", "MODEL", "BasicSRHost", "ForkHost", "OptionError", "OptionWarning",
           "RegistryHost", "available", "build_constyle_unet", "check_call_options", "check_network_options",
           "check_option_keys", "check_options", "check_training_numbers", "current_host", "format_registration_report",
           "point_sample_datasets",
           "register", "register_here", "register_into", "register_with_fork_module", "registration_report"]
