# Stage 2 as nafnet_constyle.py, with mixed precision: the forward and the loss under
# torch.autocast(bfloat16), MMEngine's AmpOptimWrapper (the twin of BasicSR's `train: amp: bf16`).
#   constyle train options/mmengine/nafnet_constyle_amp.py --work-dir work_dirs/nafnet_constyle_amp
# MMEngine 0.10's AmpOptimWrapper needs a GPU (NPU, MLU, MUSA): it refuses the CPU. For fp16 set
# dtype='float16' (the dynamic loss scale then matters; with bfloat16 it stays at its initial value
# unless a gradient overflows). `constyle train --amp` on nafnet_constyle.py picks AmpOptimWrapper
# with MMEngine's default dtype (float16 on CUDA) and the same dynamic loss scale.
_base_ = ['./nafnet_constyle.py']

optim_wrapper = dict(type='AmpOptimWrapper', dtype='bfloat16', loss_scale='dynamic')
