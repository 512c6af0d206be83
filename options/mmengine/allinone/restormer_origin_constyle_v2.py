# The baseline of restormer_constyle_constyle_v2.py: the same Restormer, data and recipe without the ConStyle v2
# prompter, so the two runs compare the prompter's effect alone.
#   constyle train options/mmengine/allinone/restormer_origin_constyle_v2.py \
#     --cfg-options train_dataloader.dataset.lq_folder=/data/mix_degradations/lq \
#     train_dataloader.dataset.gt_folder=/data/mix_degradations/hq \
#     val_dataloader.dataset.dataroot=/data/Test_small
#   constyle evaluate --checkpoint work_dirs/restormer_origin_constyle_v2/iter_100000.pth \
#     --benchmark constyle-v2 --root /data/Test_small --output eval/restormer_origin_constyle_v2
_base_ = ['./restormer_constyle_constyle_v2.py']

model = dict(prompter=None)
