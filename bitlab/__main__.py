"""``python -m bitlab``: the same as the ``bitlab`` command."""

from .cli import main

raise SystemExit(main())
