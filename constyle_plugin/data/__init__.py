"""Images and data: reading and writing images (:mod:`.imageio`), the degradations that make training
pairs (:mod:`.degradations`, :mod:`.realesrgan`), the training and pre-training datasets (:mod:`.datasets`),
the sample photos (:mod:`.samples`), the standard benchmark layouts with their datasets
(:mod:`.benchmark_layouts`, :mod:`.benchmark_datasets`) and the standard sets' SHA-256 manifest
(:mod:`.standard_sets`). It may import the ground floor, :mod:`..core`
and :mod:`..archs`, and BasicSR's utilities where installed (never a trainer); nothing from training,
tools or the integrations.
"""
