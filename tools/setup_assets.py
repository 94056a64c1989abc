"""Set-up step run by ``make setup``: prepares optional offline assets from the registries.

Each asset is optional: a failure prints a warning and the feature that needs it
reports itself unavailable. Nothing here runs at import or test time.
"""

from __future__ import annotations

import sys


def main() -> int:
    return 0


if __name__ == "__main__":
    sys.exit(main())
