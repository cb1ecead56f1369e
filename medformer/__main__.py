"""`python -m medformer <command> ...` (same as the `medformer` console script)."""

from .cli import main

raise SystemExit(main())
