import os
import random

import cv2
import numpy as np
import torch
from torch.utils import data


def _read(path):
    img = cv2.imread(path, cv2.IMREAD_COLOR)[:, :, ::-1].astype(np.float32) / 255.0
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))


class PairedImageDataset(data.Dataset):
    def __init__(self, opt):
        self.opt = opt
        self.names = sorted(os.listdir(opt['dataroot_gt']))

    def __len__(self):
        return len(self.names)

    def __getitem__(self, index):
        name = self.names[index]
        gt_path = os.path.join(self.opt['dataroot_gt'], name)
        lq_path = os.path.join(self.opt['dataroot_lq'], name)
        gt, lq = _read(gt_path), _read(lq_path)
        size = self.opt.get('gt_size')
        if self.opt['phase'] == 'train' and size:
            top = random.randint(0, gt.shape[1] - size)
            left = random.randint(0, gt.shape[2] - size)
            gt, lq = gt[:, top:top + size, left:left + size], lq[:, top:top + size, left:left + size]
        return {'lq': lq, 'gt': gt, 'lq_path': lq_path, 'gt_path': gt_path}
