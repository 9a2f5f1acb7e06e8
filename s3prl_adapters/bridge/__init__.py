"""The S3PRL bridge: the hub entries (`hubconf`), `run_downstream.py` (`launcher`), the runner hook
that trains exactly the adapters (`runner_hook`), every S3PRL workaround (`compat`), exact resume
(`resume`), fp16 loss scaling (`mixed_precision`), corpus checks (`preflight`) and the feature cache
(`feature_cache`)."""
