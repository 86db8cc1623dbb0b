"""``python -m rtkit`` is the ``rtkit`` command."""

from __future__ import annotations

from rtkit.cli import main

raise SystemExit(main())
