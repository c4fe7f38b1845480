import sys

from gigamil.cli import main

sys.exit(main())
