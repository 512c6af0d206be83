# What the all-in-one NAFNet configs (options/mmengine/allinone/) share: NAFNet-width32 with the frozen
# ConStyle v2 prompter, the PromptIR / AdaIR optimiser, the benchmark datasets and the metrics. Each config
# sets its setting, training tasks and schedule (docs/allinone-benchmarks.md).
_base_ = ['./default_runtime.py']

# PromptIR / AdaIR's data/Train folder and test/ folder: set them with --cfg-options
# train_dataloader.dataset.dataroot=... val_dataloader.dataset.dataroot=... (or in a config of your own).
train_root = 'datasets/allinone/Train'
test_root = 'datasets/allinone/test'

model = dict(
    type='ConStyleRestorer',
    backbone=dict(type='NAFNet', width=32, middle_blk_num=1, enc_blk_nums=[1, 1, 1, 28],
                  dec_blk_nums=[1, 1, 1, 1]),
    # pretrained=None: the prompter packaged with constyle-plugin; or the authors' pretrained_ConStyle_v2.pth,
    # or the export of a stage-1 run (constyle_v2_prompter.safetensors).
    prompter=dict(pretrained=None),
    inject=['encoder', 'bottleneck'],
    stages=None,  # None: the ready NAFNet spec (downs.0-2, middle_blks)
    pixel_loss=dict(type='L1Loss', loss_weight=1.0),
    # test images are cropped to a multiple of 16 (the NAFNet's own multiple): validation runs them unpadded,
    # as constyle evaluate does, so the logged numbers are the table's
    data_preprocessor=dict(type='ConStyleDataPreprocessor', size_multiple=16, pad_mode='reflect'),
)

# Batch 32 as the papers: 8 per GPU on 4 GPUs
#   (torchrun --nproc_per_node=4 -m constyle_plugin.cli train CONFIG --launcher pytorch);
# one GPU: --cfg-options train_dataloader.batch_size=32 (the same batch and iterations).
train_dataloader = dict(
    batch_size=8,
    num_workers=8,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(type='AllInOneTrainDataset', dataroot=train_root, gt_size=128, use_hflip=True, use_rot=True,
                 phase='train'),
)
# Validation: the first 10 images of every test set (task=None: the table's columns, in the papers' order;
# or a list of task keys). The full table: constyle evaluate.
val_dataloader = dict(
    batch_size=1,
    num_workers=2,
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type='AllInOneTestDataset', dataroot=test_root, task=None, max_images=10),
)
# BasicSR's calculate_psnr / calculate_ssim, RGB: PSNR/<column> and SSIM/<column> per test set, and PSNR / SSIM,
# the mean over the test sets (the papers' average), which picks the best checkpoint.
val_evaluator = [dict(type='PSNR'), dict(type='SSIM')]
val_cfg = dict(type='ValLoop')

# AdamW 2e-4 with torch's default weight decay (0.01) and betas, as PromptIR / AdaIR; no EMA.
optim_wrapper = dict(optimizer=dict(type='AdamW', lr=2e-4, weight_decay=1e-2, betas=(0.9, 0.999)))
