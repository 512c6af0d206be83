"""Entry point laid out as the forks' basicsr/train.py: parse_options() reads sys.argv, main() trains,
resuming by itself from the newest state of the experiment (mapped onto the current CUDA device)."""
import argparse
import os
import random

import numpy as np
import torch

from basicsr.data import create_dataloader, create_dataset
from basicsr.models import create_model
from basicsr.utils import get_root_logger, make_exp_dirs
from basicsr.utils.dist_util import get_dist_info, init_dist
from basicsr.utils.options import parse


def parse_options(is_train=True):
    parser = argparse.ArgumentParser()
    parser.add_argument('-opt', type=str, required=True, help='Path to option YAML file.')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm'], default='none')
    parser.add_argument('--local_rank', type=int, default=0)
    args = parser.parse_args()
    opt = parse(args.opt, is_train=is_train)
    if args.launcher == 'none':
        opt['dist'] = False
    else:
        opt['dist'] = True
        init_dist(args.launcher)
    opt['rank'], opt['world_size'] = get_dist_info()
    seed = opt.get('manual_seed', 10)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return opt


def main():
    opt = parse_options(is_train=True)
    state_folder_path = 'experiments/{}/training_states/'.format(opt['name'])
    state_folder_path = os.path.join(opt['path']['root'], state_folder_path)
    try:
        states = os.listdir(state_folder_path)
    except OSError:
        states = []
    resume_state = None
    if len(states) > 0:
        max_state_file = '{}.state'.format(max([int(x[0:-6]) for x in states]))
        opt['path']['resume_state'] = os.path.join(state_folder_path, max_state_file)
    if opt['path'].get('resume_state'):
        device_id = torch.cuda.current_device()
        resume_state = torch.load(opt['path']['resume_state'],
                                  map_location=lambda storage, loc: storage.cuda(device_id))
    make_exp_dirs(opt)
    logger = get_root_logger(log_file=os.path.join(opt['path']['log'], 'train.log'))
    train_set = create_dataset(opt['datasets']['train'])
    train_loader = create_dataloader(train_set, opt['datasets']['train'])
    val_loader = None
    if 'val' in opt['datasets']:
        val_loader = create_dataloader(create_dataset(opt['datasets']['val']), opt['datasets']['val'])
    model = create_model(opt)
    current_iter, epoch = 0, 0
    if resume_state:
        model.resume_training(resume_state)
        current_iter, epoch = resume_state['iter'], resume_state['epoch']
        logger.info(f'Resuming training from epoch: {epoch}, iter: {current_iter}.')
    total_iters = int(opt['train']['total_iter'])
    while current_iter < total_iters:
        for train_data in train_loader:
            current_iter += 1
            if current_iter > total_iters:
                break
            model.feed_data(train_data)
            model.optimize_parameters(current_iter)
            logger.info(f"iter: {current_iter} l_pix: {model.log_dict['l_pix']:.6f}")
            if current_iter % opt['logger']['save_checkpoint_freq'] == 0:
                model.save(epoch, current_iter)
            if val_loader is not None and current_iter % opt['val']['val_freq'] == 0:
                model.validation(val_loader, current_iter)
        epoch += 1
    logger.info('End of training.')
    model.save(epoch=-1, current_iter=-1)
    if val_loader is not None:
        model.validation(val_loader, current_iter)


if __name__ == '__main__':
    main()
