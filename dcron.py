"""Entry point of the dcron executable."""

import sys

from dcron.cli import main

if __name__ == "__main__":
    sys.exit(main())
