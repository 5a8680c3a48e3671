"""The tools around the images: launchers (``aws/``), containers, local runs, report, benchmarks.

Shared by all of them: where the repository is, and where the project keeps its caches on this machine.
"""

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sagemaker-classifier"
