import sys

from fedfuse.cli import main

sys.exit(main())
