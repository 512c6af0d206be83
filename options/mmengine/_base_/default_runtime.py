# Shared runtime of the ConStyle v2 MMEngine configs: iteration-based training, AdamW, cosine LR,
# checkpoints in the work dir (latest kept 3, plus the best by the validation metric).
custom_imports = dict(imports=['constyle_plugin'], allow_failed_imports=False)
# the plugin's types (ConStyleRestorer, NAFNet, PSNR, ...) live in the `constyle` scope
default_scope = 'constyle'
# ConStyleRunner = MMEngine's Runner + config checks before building + resume that works with
# torch >= 2.6 safe loading (see the README); `constyle train` uses it by default.
runner_type = 'ConStyleRunner'

max_iters = 100000
val_interval = 5000

train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=val_interval)
val_cfg = dict(type='ValLoop')

optim_wrapper = dict(
    type='OptimWrapper',
    # Only trainable parameters reach the optimiser (the frozen prompter never does).
    constructor='ConStyleOptimWrapperConstructor',
    optimizer=dict(type='AdamW', lr=3e-4, weight_decay=1e-4, betas=(0.9, 0.999)))
param_scheduler = [
    dict(type='CosineAnnealingLR', T_max=max_iters, eta_min=1e-6, by_epoch=False),
]

default_hooks = dict(
    runtime_info=dict(type='RuntimeInfoHook'),
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', interval=val_interval, by_epoch=False, max_keep_ckpts=3,
                    save_best='PSNR', rule='greater'),
    sampler_seed=dict(type='DistSamplerSeedHook'),
)

env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    dist_cfg=dict(backend='nccl'),
)
log_processor = dict(type='LogProcessor', window_size=50, by_epoch=False)
log_level = 'INFO'
vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(type='Visualizer', vis_backends=vis_backends)
randomness = dict(seed=0)
load_from = None
resume = False
