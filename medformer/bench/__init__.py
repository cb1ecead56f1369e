"""The SSL benchmark behind docs/benchmarks.md, "Which pretraining?": pretraining per method under one
CPU budget, probes and fine-tunes over seeds (`ssl`), and their summary over pretraining seeds
(`ssl_seeds`). `scripts/bench_ssl.py` and `scripts/ssl_seeds.py` launch them."""
