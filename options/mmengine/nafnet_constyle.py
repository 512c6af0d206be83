# Stage 2: NAFNet + the frozen ConStyle v2 prompter on mixed degradations (MMEngine).
#   constyle train options/mmengine/nafnet_constyle.py --work-dir work_dirs/nafnet_constyle
# The authors' schedule: 703 632 iterations of batch 16 with 128 px patches; this config keeps
# their optimiser (AdamW 3e-4, weight decay 1e-4), cosine decay to 1e-6 and EMA 0.999, over
# 100 000 iterations by default (override train_cfg.max_iters).
_base_ = ['./_base_/default_runtime.py', './_base_/mix_degradation_data.py']

model = dict(
    type='ConStyleRestorer',
    backbone=dict(type='NAFNet', width=32, middle_blk_num=1, enc_blk_nums=[1, 1, 1, 28],
                  dec_blk_nums=[1, 1, 1, 1]),
    # pretrained=None: the prompter packaged with constyle-plugin; or the path of the authors'
    # pretrained_ConStyle_v2.pth, or the export of a stage-1 run (constyle_v2_prompter.safetensors).
    prompter=dict(pretrained=None),
    inject=['encoder', 'bottleneck'],
    stages=None,  # None: the ready NAFNet spec (downs.0-2, middle_blks)
    prompt_size=None,  # longer side (px) of the image copy the prompter sees; None: full resolution
    pixel_loss=dict(type='L1Loss', loss_weight=1.0),
    # Inputs are padded to a multiple of 32 (as the authors evaluate) and cropped back.
    data_preprocessor=dict(type='ConStyleDataPreprocessor', size_multiple=32, pad_mode='reflect'),
)

custom_hooks = [dict(type='EMAHook', momentum=0.001, priority='ABOVE_NORMAL')]  # EMA 0.999
