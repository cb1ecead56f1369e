"""Benchmarks, launched by thin scripts in scripts/: the backbone comparison, which runs
configs/study/backbone.yaml through the study and adds the multi-task runs (`backbone`), train-step
speed against the thesis architecture (`backbone_speed`), augmentation on the device (`augment`),
scaling of speed and memory (`scale`), and the CUDA path (`gpu`). The pretraining benchmarks are
study configs (configs/study/ssl_benchmark.yaml, ssl_seeds.yaml)."""
