"""Behaves as NAFNet's ImageRestorationModel where it matters: validation always reduces metrics
with torch.distributed (so it needs a process group), optimiser over parameters that train."""
import importlib
from copy import deepcopy

import numpy as np
import torch

from basicsr.models.archs import define_network
from basicsr.metrics import calculate_ssim
from basicsr.models.base_model import BaseModel
from basicsr.utils import get_root_logger

loss_module = importlib.import_module('basicsr.models.losses')


def _bgr8(img):
    return (img[0].permute(1, 2, 0).cpu().numpy()[..., ::-1] * 255).round().astype(np.uint8)


class ImageRestorationModel(BaseModel):
    def __init__(self, opt):
        super().__init__(opt)
        self.net_g = self.model_to_device(define_network(deepcopy(opt['network_g'])))
        load_path = self.opt['path'].get('pretrain_network_g')
        if load_path is not None:
            self.load_network(self.net_g, load_path, self.opt['path'].get('strict_load_g', True))
        if self.is_train:
            self.net_g.train()
            train_opt = self.opt['train']
            pixel_opt = dict(train_opt['pixel_opt'])
            self.cri_pix = getattr(loss_module, pixel_opt.pop('type'))(**pixel_opt)
            optim_opt = dict(train_opt['optim_g'])
            optim_params = [v for v in self.net_g.parameters() if v.requires_grad]
            self.optimizer_g = getattr(torch.optim, optim_opt.pop('type'))([{'params': optim_params}], **optim_opt)
            self.optimizers.append(self.optimizer_g)

    def feed_data(self, data):
        self.lq = data['lq'].to(self.device)
        if 'gt' in data:
            self.gt = data['gt'].to(self.device)

    def optimize_parameters(self, current_iter):
        self.optimizer_g.zero_grad()
        self.output = self.net_g(self.lq)
        l_pix = self.cri_pix(self.output, self.gt)
        l_pix.backward()
        self.optimizer_g.step()
        self.log_dict = {'l_pix': l_pix.item()}

    def dist_validation(self, dataloader, current_iter, save_img=False):
        self.net_g.eval()
        total = torch.zeros(3, device=self.device)
        with torch.no_grad():
            for data in dataloader:
                self.feed_data(data)
                out = self.net_g(self.lq).clamp(0, 1)
                mse = ((out - self.gt) ** 2).mean()
                ssim = calculate_ssim(_bgr8(out), _bgr8(self.gt), 0)  # its window calls .cuda()
                total += torch.stack([10 * torch.log10(1 / mse), torch.tensor(ssim, device=self.device),
                                      torch.ones((), device=self.device)])
        torch.distributed.reduce(total, dst=0)
        self.net_g.train()
        self.metric_results = {'psnr': (total[0] / total[2]).item(), 'ssim': (total[1] / total[2]).item()}
        get_root_logger().info(f"Validation psnr: {self.metric_results['psnr']:.4f} "
                               f"ssim: {self.metric_results['ssim']:.4f}")
        return self.metric_results['psnr']

    def nondist_validation(self, *args, **kwargs):
        return self.dist_validation(*args, **kwargs)

    def save(self, epoch, current_iter):
        self.save_network(self.net_g, 'net_g', current_iter)
        self.save_training_state(epoch, current_iter)
