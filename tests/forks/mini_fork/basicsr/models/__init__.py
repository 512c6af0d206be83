import importlib
from os import path as osp

from basicsr.utils import get_root_logger, scandir

model_folder = osp.dirname(osp.abspath(__file__))
model_filenames = [osp.splitext(v)[0] for v in scandir(model_folder) if v.endswith('_model.py')]
_model_modules = [importlib.import_module(f'basicsr.models.{name}') for name in model_filenames]


def create_model(opt):
    model_type = opt['model_type']
    for module in _model_modules:
        model_cls = getattr(module, model_type, None)
        if model_cls is not None:
            break
    if model_cls is None:
        raise ValueError(f'Model {model_type} is not found.')
    model = model_cls(opt)
    get_root_logger().info(f'Model [{model.__class__.__name__}] is created.')
    return model
