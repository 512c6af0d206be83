import importlib
from os import path as osp

import torch.utils.data

from basicsr.utils import scandir

data_folder = osp.dirname(osp.abspath(__file__))
dataset_filenames = [osp.splitext(v)[0] for v in scandir(data_folder) if v.endswith('_dataset.py')]
_dataset_modules = [importlib.import_module(f'basicsr.data.{name}') for name in dataset_filenames]


def create_dataset(dataset_opt):
    dataset_type = dataset_opt['type']
    for module in _dataset_modules:
        dataset_cls = getattr(module, dataset_type, None)
        if dataset_cls is not None:
            break
    if dataset_cls is None:
        raise ValueError(f'Dataset {dataset_type} is not found.')
    return dataset_cls(dataset_opt)


def create_dataloader(dataset, dataset_opt):
    if dataset_opt['phase'] == 'train':
        return torch.utils.data.DataLoader(dataset, batch_size=dataset_opt['batch_size_per_gpu'], shuffle=True,
                                           num_workers=0, drop_last=True)
    return torch.utils.data.DataLoader(dataset, batch_size=1, shuffle=False, num_workers=0)
