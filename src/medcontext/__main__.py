"""``python -m medcontext`` runs the command line."""

import sys

from medcontext.cli import main

sys.exit(main())
