import sys

from probml.cli import main

sys.exit(main())
