"""Launcher of medformer.data.upsample: `python scripts/upsample_medmnist.py --help`."""

from medformer.data.upsample import main

if __name__ == "__main__":
    main()
