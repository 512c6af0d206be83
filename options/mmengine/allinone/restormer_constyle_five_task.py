# The all-in-one five-task setting with Restormer (dim 48, as Restormer's own release) and the frozen
# ConStyle v2 prompter: nafnet_constyle_five_task.py with the backbone swapped; the same data, AdaIR's
# recipe and metrics. The BasicSR twin: options/allinone/restormer_constyle_five_task.yml.
#   constyle train options/mmengine/allinone/restormer_constyle_five_task.py \
#     --cfg-options train_dataloader.dataset.dataroot=/data/allinone/Train \
#     val_dataloader.dataset.dataroot=/data/allinone/test
_base_ = ['./nafnet_constyle_five_task.py']

model = dict(
    backbone=dict(_delete_=True, type='Restormer', inp_channels=3, out_channels=3, dim=48, num_blocks=[4, 6, 6, 8],
                  num_refinement_blocks=4, heads=[1, 2, 4, 8], ffn_expansion_factor=2.66, bias=False,
                  LayerNorm_type='WithBias'),
    stages=None,  # None: the ready Restormer spec (down1_2, down2_3, down3_4, latent)
)
