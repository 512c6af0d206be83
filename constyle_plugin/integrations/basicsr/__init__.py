"""BasicSR integration: the plugin's entries in every flavour of BasicSR, option checks, the
plugin's model classes (:mod:`.models`) and the ``basicsr`` command (:mod:`.cli`, :mod:`.fork`).

Importing this package does not import basicsr; :mod:`.models` and the command do.
See :mod:`.registry` for the three flavours and what is registered where.
"""
from .registry import (ARCH, DATASET, LOSS, MODEL, BasicSRHost, ForkHost, OptionError, OptionWarning, RegistryHost,
                       available, build_constyle_unet, check_call_options, check_network_options, check_option_keys,
                       check_options, check_training_numbers, current_host, format_registration_report,
                       point_sample_datasets, register,
                       register_here, register_into, register_with_fork_module, registration_report)

__all__ = ["ARCH", "DATASET", "LOSS", "MODEL", "BasicSRHost", "ForkHost", "OptionError", "OptionWarning",
           "RegistryHost", "available", "build_constyle_unet", "check_call_options", "check_network_options",
           "check_option_keys", "check_options", "check_training_numbers", "current_host", "format_registration_report",
           "point_sample_datasets",
           "register", "register_here", "register_into", "register_with_fork_module", "registration_report"]
