from __future__ import annotations

from pgesam_live.cli import main

raise SystemExit(main())
