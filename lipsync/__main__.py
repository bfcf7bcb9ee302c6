"""``python -m lipsync``: the command line."""

from .cli import main

raise SystemExit(main())
