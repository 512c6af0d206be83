# Stage 1: pre-train the ConStyle v2 prompter (MoCo with five losses) through MMEngine.
#   constyle train options/mmengine/constyle_v2_pretrain.py --work-dir work_dirs/constyle_v2_pretrain
# The authors' settings: ImageNet, resize 256, random-resized crop 224, batch 32, queue 65 760,
# AdamW 3e-4 / 1e-4, cosine to 1e-4 over 400 000 iterations, EMA 0.999, pretext loss for the first
# 50 000 iterations. Default data here: a class tree built from the offline sample photos (one
# class per photo) in `sample_dir` (None: ~/.cache/constyle_plugin/sample_classes); set
# `dataroot` to an ImageFolder tree (e.g. ImageNet's train folder) for a real run.
# The prompter is exported to <work_dir>/constyle_v2_prompter.safetensors at every checkpoint;
# stage-2 configs load it with model.prompter.pretrained=<that file>.
_base_ = ['./_base_/default_runtime.py']

max_iters = 400000
val_interval = 5000
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=val_interval)
param_scheduler = [dict(type='CosineAnnealingLR', T_max=max_iters, eta_min=1e-4, by_epoch=False)]

model = dict(
    type='ConStylePretrainer',
    queue_size=65760,   # a multiple of the batch size (all ranks)
    momentum=0.999,
    temperature=0.07,
    normalize=False,    # the authors do not L2-normalise q, k or the queue
    # (short runs on small data can collapse this way: PretextAccuracy reports latent_spread and
    # warns below 0.1; normalize=True, MoCo's choice, trained the packaged prompter)
    enqueue='query',    # the authors enqueue the query latents
    num_classes=1000,
    pretrained=None,
    class_iter=50000,
    kl_iter=None,       # distillation on for the whole run
    degradation=dict(),  # Real-ESRGAN second-order pipeline, the authors' values
    data_preprocessor=dict(type='ConStyleDataPreprocessor'),
)

train_dataloader = dict(
    batch_size=32,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(type='ConStylePretrainDataset', dataroot=None, sample_dir=None, phase='train',
                 resize=256, crop_size=224, weather_prob=0.4),
)
val_dataloader = dict(
    batch_size=16,
    num_workers=2,
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type='ConStylePretrainDataset', dataroot=None, sample_dir=None, phase='val',
                 resize=256, crop_size=224, weather_prob=0.4, seed=0),
)
val_evaluator = dict(type='PretextAccuracy', topk=(1, 5))

default_hooks = dict(checkpoint=dict(save_best='top1', rule='greater'))
custom_hooks = [
    dict(type='EMAHook', momentum=0.001, priority='ABOVE_NORMAL'),  # EMA 0.999
    dict(type='PrompterExportHook', filename='constyle_v2_prompter.safetensors'),
]
