import random

import cv2


def augment(imgs, hflip=True, rotation=True, flows=None, return_status=False, vflip=False):
    hflip = hflip and random.random() < 0.5
    rot90 = rotation and random.random() < 0.5

    def _augment(img):
        if hflip:
            cv2.flip(img, 1, img)
        if rot90:
            img = img.transpose(1, 0, 2)
        return img

    if not isinstance(imgs, list):
        return _augment(imgs)
    return [_augment(img) for img in imgs]
