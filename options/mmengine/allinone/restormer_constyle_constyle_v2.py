# The ConStyle v2 authors' suite with Restormer (dim 48, as Restormer's own release) and the frozen ConStyle v2
# prompter: nafnet_constyle_constyle_v2.py with the backbone swapped; the same data, the authors' stage-2
# recipe and metrics. The BasicSR twin: options/allinone/restormer_constyle_constyle_v2.yml.
#   constyle train options/mmengine/allinone/restormer_constyle_constyle_v2.py \
#     --cfg-options train_dataloader.dataset.lq_folder=/data/mix_degradations/lq \
#     train_dataloader.dataset.gt_folder=/data/mix_degradations/hq \
#     val_dataloader.dataset.dataroot=/data/Test_small
#   constyle evaluate --checkpoint work_dirs/restormer_constyle_constyle_v2/iter_100000.pth \
#     --benchmark constyle-v2 --root /data/Test_small --output eval/restormer_constyle_constyle_v2
_base_ = ['./nafnet_constyle_constyle_v2.py']

model = dict(
    backbone=dict(_delete_=True, type='Restormer', inp_channels=3, out_channels=3, dim=48, num_blocks=[4, 6, 6, 8],
                  num_refinement_blocks=4, heads=[1, 2, 4, 8], ffn_expansion_factor=2.66, bias=False,
                  LayerNorm_type='WithBias'),
    stages=None,  # None: the ready Restormer spec (down1_2, down2_3, down3_4, latent)
)
