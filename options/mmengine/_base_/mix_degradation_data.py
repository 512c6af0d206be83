# Stage-2 data: clean photos degraded on the fly by the eight all-in-one degradations.
# Default: the offline scikit-image / matplotlib sample photos, exported at first use into
# `sample_dir` (None: $CONSTYLE_PLUGIN_CACHE or ~/.cache/constyle_plugin/sample_photos);
# 20 % of the photos are held out for validation (photos='val'). Point `dataroot_gt` at your own
# folder of clean images to train on them instead.
train_dataloader = dict(
    batch_size=16,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(type='MixDegradationDataset', dataroot_gt=None, sample_dir=None, photos='train',
                 phase='train', gt_size=128, use_hflip=True, use_rot=True, repeat=100),
)
val_dataloader = dict(
    batch_size=1,
    num_workers=2,
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type='MixDegradationDataset', dataroot_gt=None, sample_dir=None, photos='val',
                 phase='val', gt_size=256, val_crop='center', repeat=2, seed=0),
)
val_evaluator = [
    dict(type='PSNR'),
    dict(type='SSIM'),
    dict(type='PSNR', test_y_channel=True),
    dict(type='SSIM', test_y_channel=True),
]
