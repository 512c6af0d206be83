# The all-in-one three-task setting (dehazing on SOTS outdoor, deraining on Rain100L, denoising on BSD68
# at sigma 15 / 25 / 50): NAFNet with the frozen ConStyle v2 prompter, PromptIR's recipe, on MMEngine.
# Layouts, options and the papers' numbers: docs/allinone-benchmarks.md; the iteration arithmetic is in
# the BasicSR twin, options/allinone/nafnet_constyle_three_task.yml. What the all-in-one configs share
# (network, data, optimiser, metrics, batch): ../_base_/allinone_nafnet.py.
#   constyle train options/mmengine/allinone/nafnet_constyle_three_task.py \
#     --cfg-options train_dataloader.dataset.dataroot=/data/allinone/Train \
#     val_dataloader.dataset.dataroot=/data/allinone/test
#   constyle evaluate --checkpoint work_dirs/nafnet_constyle_three_task/iter_534120.pth \
#     --benchmark three-task --root /data/allinone/test --output eval/nafnet_constyle_three_task
_base_ = ['../_base_/allinone_nafnet.py']

setting = 'three-task'
train_tasks = ['denoise_15', 'denoise_25', 'denoise_50', 'derain', 'dehaze']
# 142 431 samples per epoch (46 296 denoise + 24 000 derain + 72 135 dehaze) / (4 GPUs x 8) = 4 451
iters_per_epoch = 4451
max_iters = 120 * iters_per_epoch  # 120 epochs
warmup_iters = 15 * iters_per_epoch  # linear warm-up for 15 epochs
cosine_end = 150 * iters_per_epoch  # then cosine to 0 at epoch 150 (not reached: the rate ends above 0)
val_interval = 5 * iters_per_epoch

train_dataloader = dict(dataset=dict(setting=setting, tasks=train_tasks))
val_dataloader = dict(dataset=dict(setting=setting))

train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=val_interval)
param_scheduler = [
    dict(type='LinearLR', start_factor=1.0 / warmup_iters, end_factor=1.0, begin=0, end=warmup_iters,
         by_epoch=False),
    dict(type='CosineAnnealingLR', T_max=cosine_end - warmup_iters, eta_min=0.0, begin=warmup_iters,
         end=max_iters, by_epoch=False),
]
default_hooks = dict(checkpoint=dict(interval=val_interval), logger=dict(interval=100))
