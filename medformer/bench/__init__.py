"""Benchmarks that are not studies: how speed and memory scale (`scale`) and the CUDA path's numerics
and throughput (`gpu`). `scripts/bench_scale.py` and `scripts/bench_gpu.py` launch them; the
pretraining benchmarks are study configs (configs/study/ssl_benchmark.yaml, ssl_seeds.yaml)."""
