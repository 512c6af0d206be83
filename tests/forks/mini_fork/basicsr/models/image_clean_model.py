"""Behaves as Restormer's ImageCleanModel where it matters: an EMA copy built from the same
network_g options (not a deepcopy), averaged over every parameter, saved as params_ema."""
import importlib
from copy import deepcopy

import torch

from basicsr.models.archs import define_network
from basicsr.models.image_restoration_model import ImageRestorationModel

loss_module = importlib.import_module('basicsr.models.losses')


class ImageCleanModel(ImageRestorationModel):
    def __init__(self, opt):
        super().__init__(opt)
        self.ema_decay = opt['train'].get('ema_decay', 0) if self.is_train else 0
        if self.ema_decay > 0:
            self.net_g_ema = define_network(self.opt['network_g']).to(self.device)
            load_path = self.opt['path'].get('pretrain_network_g')
            if load_path is not None:
                self.load_network(self.net_g_ema, load_path, True, 'params_ema')
            else:
                self.model_ema(0)
            self.net_g_ema.eval()

    def optimize_parameters(self, current_iter):
        super().optimize_parameters(current_iter)
        if self.ema_decay > 0:
            self.model_ema(decay=self.ema_decay)

    def save(self, epoch, current_iter):
        if self.ema_decay > 0:
            self.save_network([self.net_g, self.net_g_ema], 'net_g', current_iter, param_key=['params', 'params_ema'])
        else:
            self.save_network(self.net_g, 'net_g', current_iter)
        self.save_training_state(epoch, current_iter)
