"""The plugin's mechanics: the ConStyle v2 prompter (:mod:`.prompter`), wrapping a U-Net
(:mod:`.unet`: ``wrap_unet`` / ``unwrap_unet``, ``ConStyleUNet``), stage discovery (:mod:`.discovery`),
the forward hooks (:mod:`.hooks`), the injection modules (:mod:`.injection`), stage specs and checks
(:mod:`.stages`), saving and loading a wrapped net (:mod:`.pretrained`), options -> wrapped net
(:mod:`.builder`), input padding (:mod:`.padding`) and recorded constructor arguments (:mod:`.init_args`).
It imports torch, timm, einops, safetensors, the standard library and the package's ground floor
(``errors``, ``files``, ``runs``, ``safe_loading``) only: no data, training, tools or integration module,
so ``wrap_unet`` works in any code base.
"""
