from os import path as osp

import yaml


def parse(opt_path, is_train=True):
    with open(opt_path, mode='r') as f:
        opt = yaml.load(f, Loader=yaml.SafeLoader)
    opt['is_train'] = is_train
    for phase, dataset in opt.get('datasets', {}).items():
        dataset['phase'] = phase.split('_')[0]
    opt['path']['root'] = osp.abspath(osp.join(__file__, osp.pardir, osp.pardir, osp.pardir))
    if is_train:
        root = osp.join(opt['path']['root'], 'experiments', opt['name'])
        opt['path'].update(experiments_root=root, models=osp.join(root, 'models'),
                           training_states=osp.join(root, 'training_states'), log=root)
    else:
        root = osp.join(opt['path']['root'], 'results', opt['name'])
        opt['path'].update(results_root=root, log=root)
    return opt
