"""The downstream configs this package ships (one folder per S3PRL recipe), installed as the package
`s3prl_adapters.downstream_configs` so an installed wheel finds them (s3prl_adapters/paths.py)."""
