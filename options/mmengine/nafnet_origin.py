# Stage 2 baseline ("origin"): the same NAFNet, data and schedule as nafnet_constyle.py, without
# the prompter, so the two runs compare the prompter's effect alone.
#   constyle train options/mmengine/nafnet_origin.py --work-dir work_dirs/nafnet_origin
_base_ = ['./nafnet_constyle.py']

model = dict(prompter=None)
