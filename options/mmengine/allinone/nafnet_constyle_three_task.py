# The all-in-one three-task setting (dehazing on SOTS outdoor, deraining on Rain100L, denoising on BSD68
# at sigma 15 / 25 / 50): NAFNet with the frozen ConStyle v2 prompter, PromptIR's recipe, on MMEngine.
# Layouts, options and the papers' numbers: docs/allinone-benchmarks.md; the iteration arithmetic is in
# the BasicSR twin, options/allinone/nafnet_constyle_three_task.yml.
#   constyle train options/mmengine/allinone/nafnet_constyle_three_task.py \
#     --cfg-options train_dataloader.dataset.dataroot=/data/allinone/Train \
#     val_dataloader.dataset.dataroot=/data/allinone/test
#   constyle evaluate --checkpoint work_dirs/nafnet_constyle_three_task/iter_534120.pth \
#     --benchmark three-task --root /data/allinone/test --output eval/nafnet_constyle_three_task
# Batch 32 as the papers: 8 per GPU on 4 GPUs
#   (torchrun --nproc_per_node=4 -m constyle_plugin.cli train CONFIG --launcher pytorch);
# one GPU: --cfg-options train_dataloader.batch_size=32 (the same batch and iterations).
_base_ = ['../_base_/default_runtime.py']

# PromptIR / AdaIR's data/Train folder and test/ folder (or set them with --cfg-options as above).
train_root = 'datasets/allinone/Train'
test_root = 'datasets/allinone/test'

setting = 'three-task'
train_tasks = ['denoise_15', 'denoise_25', 'denoise_50', 'derain', 'dehaze']
# 142 431 samples per epoch (46 296 denoise + 24 000 derain + 72 135 dehaze) / (4 GPUs x 8) = 4 451
iters_per_epoch = 4451
max_iters = 120 * iters_per_epoch  # 120 epochs
warmup_iters = 15 * iters_per_epoch  # linear warm-up for 15 epochs
cosine_end = 150 * iters_per_epoch  # then cosine to 0 at epoch 150 (not reached: the rate ends above 0)
val_interval = 5 * iters_per_epoch

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

train_dataloader = dict(
    batch_size=8,
    num_workers=8,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(type='AllInOneTrainDataset', setting=setting, dataroot=train_root, tasks=train_tasks,
                 gt_size=128, use_hflip=True, use_rot=True, phase='train'),
)
# Validation: the first 10 images of every test set (task=None: the table's columns, in the papers' order;
# or a list of task keys). The full table: constyle evaluate, as above.
val_dataloader = dict(
    batch_size=1,
    num_workers=2,
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type='AllInOneTestDataset', setting=setting, dataroot=test_root, task=None, max_images=10),
)
# BasicSR's calculate_psnr / calculate_ssim, RGB: PSNR/<column> and SSIM/<column> per test set, and PSNR / SSIM,
# the mean over the test sets (the papers' average), which picks the best checkpoint.
val_evaluator = [dict(type='PSNR'), dict(type='SSIM')]
val_cfg = dict(type='ValLoop')

train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=val_interval)
# AdamW 2e-4 with torch's default weight decay (0.01) and betas, as PromptIR / AdaIR; no EMA.
optim_wrapper = dict(optimizer=dict(type='AdamW', lr=2e-4, weight_decay=1e-2, betas=(0.9, 0.999)))
param_scheduler = [
    dict(type='LinearLR', start_factor=1.0 / warmup_iters, end_factor=1.0, begin=0, end=warmup_iters,
         by_epoch=False),
    dict(type='CosineAnnealingLR', T_max=cosine_end - warmup_iters, eta_min=0.0, begin=warmup_iters,
         end=max_iters, by_epoch=False),
]
default_hooks = dict(checkpoint=dict(interval=val_interval), logger=dict(interval=100))
