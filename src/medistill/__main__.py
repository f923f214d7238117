"""``python -m medistill`` (also what ``torchrun -m medistill train ...`` runs)."""

import sys

from medistill.cli import main

sys.exit(main())
