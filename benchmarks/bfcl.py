"""BFCL function calling: validity and AST accuracy per category, time per question against
llama-cpp-python's ``chatml-function-calling``.

    python benchmarks/bfcl.py --per-category 10
"""

import sys

from edgeslm.bench.bfcl import main

if __name__ == "__main__":
    sys.exit(main())
