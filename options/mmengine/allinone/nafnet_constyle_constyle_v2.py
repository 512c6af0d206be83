# The ConStyle v2 authors' all-in-one suite (GoPro, SOTS, Rain, CBSD68 at sigma 25, LIVE1 JPEG q20, LOL,
# defocus, snow): NAFNet with the frozen ConStyle v2 prompter, the authors' stage-2 recipe on MMEngine.
# The recipe (network, AdamW 3e-4, cosine schedule to 1e-6, EMA 0.999, batch 16, 128 px patches) is that of
# ../nafnet_constyle.py, inherited unchanged; this config swaps the data: paired training folders (the
# authors' Mix Degradations set, each degraded patch beside its clean one under the same file name) and
# validation on the whole suite. Layouts and the BasicSR twin: docs/allinone-benchmarks.md,
# options/allinone/nafnet_constyle_constyle_v2.yml.
#   constyle train options/mmengine/allinone/nafnet_constyle_constyle_v2.py \
#     --cfg-options train_dataloader.dataset.lq_folder=/data/mix_degradations/lq \
#     train_dataloader.dataset.gt_folder=/data/mix_degradations/hq \
#     val_dataloader.dataset.dataroot=/data/Test_small
#   constyle evaluate --checkpoint work_dirs/nafnet_constyle_constyle_v2/iter_100000.pth \
#     --benchmark constyle-v2 --root /data/Test_small --output eval/nafnet_constyle_constyle_v2
_base_ = ['../nafnet_constyle.py']

# The authors' Mix Degradations folders and Test_small/ folder: set them with --cfg-options (above) or in a
# config of your own; relative paths are relative to the folder you run in.
train_lq = 'datasets/mix_degradations/lq'
train_gt = 'datasets/mix_degradations/hq'
test_root = 'datasets/Test_small'

# Test images are cropped to a multiple of 32 (the suite's crop): validation runs them unpadded, as
# constyle evaluate does, so the logged numbers are its table's.
model = dict(data_preprocessor=dict(size_multiple=32))

train_dataloader = dict(
    dataset=dict(_delete_=True, type='PairedFolderDataset', lq_folder=train_lq, gt_folder=train_gt,
                 phase='train', gt_size=128, use_hflip=True, use_rot=True, filename_tmpl='{}'),
)
# Every image of every test set of the suite in one dataloader (task=None: the table's columns, in order; the
# suite's sets are the authors' small ones and they validate on them whole): PSNR/<column> and SSIM/<column>
# per set, and PSNR / SSIM, the mean over the sets (the table's average), which picks the best checkpoint.
val_dataloader = dict(
    dataset=dict(_delete_=True, type='AllInOneTestDataset', setting='constyle-v2', dataroot=test_root, task=None),
)
val_evaluator = [dict(type='PSNR'), dict(type='SSIM')]  # RGB, as the table
