import sys

from gpfm.slide.cli import main

sys.exit(main())
