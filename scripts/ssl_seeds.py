"""Probe and fine-tuning results of `bench_ssl.py` over pretraining seeds: mean ± std per method and
dataset, against the random-init encoder drawn with the same seeds.

    python scripts/ssl_seeds.py docs/results/ssl_benchmark_time.json docs/results/seed1_*.json \
        docs/results/seed2_*.json --name ssl_seeds

Each report holds one pretraining seed (`bench_ssl.py --seed`, seed 0 before that flag existed); a
later report's (method, seed) replaces an earlier one's, which the output names. Every report must
share the budget and probe settings, and every seed of a method its learning rate, predictor LR
factor and target momentum. A method pretrained in batches of one dataset each
(data.batch_by_dataset) gets its own row, `<method>/by-dataset`; --rows keeps only the rows named. The comparison with random init is the
difference of the means, with Welch's one-sided t-test (method > random) over the seeds: it covers
pretraining-seed and init noise, not only test-set noise.
Writes <out>/<name>.{json,md}.
"""

import sys

from medformer.bench.ssl_seeds import main

if __name__ == "__main__":
    sys.exit(main())
