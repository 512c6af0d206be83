"""What the ``constyle`` command runs on a trained network: restoring images (:mod:`.restore`: loading
a network, tiling, writing images), scoring it on a benchmark (:mod:`.evaluate`), ONNX export
(:mod:`.export`) and checkpoint conversion (:mod:`.convert`); and the standard data sets found, checked
and laid out (:mod:`.data`). It may import every layer below it (the
ground floor, core, archs, data, training) and reads trainer runs only through the run-reader registry
(:mod:`constyle_plugin.runs`), which the integrations fill; it never imports an integration or a trainer.
"""
