"""Stage-1 pre-training of the prompter (:mod:`.pretrain`: the MoCo wrapper and its loss) and the
training losses (:mod:`.losses`). It may import the ground floor, :mod:`..core`, :mod:`..archs` and
:mod:`..data`, and BasicSR's utilities where installed (never a trainer); nothing from tools or the
integrations.
"""
