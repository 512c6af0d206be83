# The baseline of restormer_constyle_five_task.py: the same Restormer, data and recipe without the ConStyle v2
# prompter, so the two runs compare the prompter's effect alone.
#   constyle train options/mmengine/allinone/restormer_origin_five_task.py \
#     --cfg-options train_dataloader.dataset.dataroot=/data/allinone/Train \
#     val_dataloader.dataset.dataroot=/data/allinone/test
_base_ = ['./restormer_constyle_five_task.py']

model = dict(prompter=None)
