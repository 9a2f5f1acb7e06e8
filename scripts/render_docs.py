"""Render the README's and docs/'s measured tables again from the files the measuring commands wrote
(docs/data/). tests/test_docs.py fails when a block differs from its rendering."""

import glob
import os
import sys

from s3prl_adapters.tools.render import refresh

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

if __name__ == "__main__":
    changed = [p for p in [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
               if refresh(p, ROOT)]
    print("rendered again: " + (", ".join(os.path.relpath(p, ROOT) for p in changed) or "nothing changed"), file=sys.stderr)
