# Stage 2 baseline ("origin"): the same MAXIM-1S, data and schedule as maxim_constyle.py, without
# the prompter, so the two runs compare the prompter's effect alone.
#   constyle train options/mmengine/maxim_origin.py --work-dir work_dirs/maxim_origin
_base_ = ['./maxim_constyle.py']

model = dict(prompter=None)
