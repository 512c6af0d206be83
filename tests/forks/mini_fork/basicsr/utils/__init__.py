import logging
from .img_util import img2tensor  # noqa: F401
import os


def scandir(folder, suffix=None):
    for entry in sorted(os.listdir(folder)):
        if suffix is None or entry.endswith(suffix):
            yield entry


def get_root_logger(logger_name='basicsr', log_file=None):
    logger = logging.getLogger(logger_name)
    if not logger.handlers:
        logger.addHandler(logging.StreamHandler())
        logger.setLevel(logging.INFO)
    if log_file is not None and not any(isinstance(h, logging.FileHandler) for h in logger.handlers):
        logger.addHandler(logging.FileHandler(log_file))
    return logger


def make_exp_dirs(opt):
    for key, path in opt['path'].items():
        if key not in ('root', 'resume_state', 'strict_load_g', 'param_key') and 'pretrain' not in key \
                and isinstance(path, str):
            os.makedirs(path, exist_ok=True)
