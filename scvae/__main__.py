"""``python -m scvae``: the command line (:mod:`scvae.cli`)."""

from .cli import main

raise SystemExit(main())
