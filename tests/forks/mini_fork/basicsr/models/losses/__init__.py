from .losses import L1Loss, PSNRLoss

__all__ = ['L1Loss', 'PSNRLoss']
