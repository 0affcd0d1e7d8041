"""``python -m tunebook.workbook.exercises [--check]``: write the learner notebooks, or check they are current."""

import sys

from tunebook.workbook.exercises.learner import main

sys.exit(main())
