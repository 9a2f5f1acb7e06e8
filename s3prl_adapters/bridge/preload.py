"""Importing this module imports what every `run_downstream.py` process of ours imports before it
does any work: torch, S3PRL's launcher and runner (behind the lazy hub) and our bridge. A fork
server that imports it once hands each forked run these modules ready; a fresh interpreter pays
1.5-2 s for them (2-core CPU), twice per benchmark run (train, then evaluate)."""

from s3prl_adapters.bridge import compat

compat.s3prl_hub_imports_every_upstream()  # before anything imports S3PRL's hub

import s3prl.run_downstream  # noqa: E402,F401

from s3prl_adapters.bridge import hubconf, launcher, runner_hook  # noqa: E402,F401
