"""``python -m pop3proxy``: the same entry point as the console script."""

from pop3proxy.cli import main

raise SystemExit(main())
