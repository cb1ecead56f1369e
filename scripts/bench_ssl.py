"""Pretraining benchmark on CPU: every method (the SSL methods, pseudo-label classification and
VICReg + pseudo-labels) pretrains medformer_small for the same time budget on the unlabeled train
splits of four MedMNIST datasets, then linear probe / kNN per dataset vs the random-init encoder,
and fine-tuning with 10% / 100% labels vs scratch.

    python scripts/bench_ssl.py --minutes-per-method 2 --methods simclr vicreg
    python scripts/bench_ssl.py --methods vicreg pseudolabel vicreg+pseudolabel --name pseudolabel_benchmark \
        --finetune-datasets pneumoniamnist breastmnist retinamnist adrenalmnist3d --fractions 0.1

Pseudo-label methods first cluster the pool (`medformer pseudolabel`, all train images) and report
its cluster quality.

Writes docs/results/ssl_benchmark.json and docs/results/ssl_benchmark.md (with the command, the
machine, throughput per method and published numbers for the same datasets).
"""

import sys

from medformer.bench.ssl import main

if __name__ == "__main__":
    sys.exit(main())
