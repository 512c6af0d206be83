import os

import torch
from torch.nn.parallel import DataParallel, DistributedDataParallel


class BaseModel():
    def __init__(self, opt):
        self.opt = opt
        self.device = torch.device('cuda' if opt['num_gpu'] != 0 else 'cpu')
        self.is_train = opt['is_train']
        self.optimizers = []

    def validation(self, dataloader, current_iter, save_img=False):
        if self.opt['dist']:
            return self.dist_validation(dataloader, current_iter, save_img)
        return self.nondist_validation(dataloader, current_iter, save_img)

    def model_ema(self, decay=0.999):
        net_g = self.get_bare_model(self.net_g)
        net_g_params = dict(net_g.named_parameters())
        net_g_ema_params = dict(self.net_g_ema.named_parameters())
        for k in net_g_ema_params.keys():
            net_g_ema_params[k].data.mul_(decay).add_(net_g_params[k].data, alpha=1 - decay)

    def model_to_device(self, net):
        net = net.to(self.device)
        if self.opt['dist']:
            net = DistributedDataParallel(net, device_ids=[torch.cuda.current_device()])
        elif self.opt['num_gpu'] > 1:
            net = DataParallel(net)
        return net

    def get_bare_model(self, net):
        if isinstance(net, (DataParallel, DistributedDataParallel)):
            net = net.module
        return net

    def get_current_learning_rate(self):
        return [param_group['lr'] for param_group in self.optimizers[0].param_groups]

    def save_network(self, net, net_label, current_iter, param_key='params'):
        if current_iter == -1:
            current_iter = 'latest'
        save_path = os.path.join(self.opt['path']['models'], f'{net_label}_{current_iter}.pth')
        net = net if isinstance(net, list) else [net]
        param_key = param_key if isinstance(param_key, list) else [param_key]
        save_dict = {}
        for net_, key_ in zip(net, param_key):
            state_dict = self.get_bare_model(net_).state_dict()
            save_dict[key_] = {k: v.cpu() for k, v in state_dict.items()}
        torch.save(save_dict, save_path)

    def load_network(self, net, load_path, strict=True, param_key='params'):
        net = self.get_bare_model(net)
        load_net = torch.load(load_path, map_location=lambda storage, loc: storage)
        if param_key is not None:
            if param_key not in load_net and 'params' in load_net:
                param_key = 'params'
            load_net = load_net[param_key]
        net.load_state_dict(load_net, strict=strict)

    def save_training_state(self, epoch, current_iter):
        if current_iter != -1:
            state = {'epoch': epoch, 'iter': current_iter,
                     'optimizers': [o.state_dict() for o in self.optimizers]}
            save_path = os.path.join(self.opt['path']['training_states'], f'{current_iter}.state')
            torch.save(state, save_path)

    def resume_training(self, resume_state):
        for o, s in zip(self.optimizers, resume_state['optimizers']):
            o.load_state_dict(s)
