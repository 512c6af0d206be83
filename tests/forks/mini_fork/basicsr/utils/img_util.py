import cv2
import torch


def img2tensor(imgs, bgr2rgb=True, float32=True):
    def _totensor(img):
        if img.shape[2] == 3 and bgr2rgb:
            img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        img = torch.from_numpy(img.transpose(2, 0, 1))
        return img.float() if float32 else img

    if isinstance(imgs, list):
        return [_totensor(img) for img in imgs]
    return _totensor(imgs)
