"""The one exception type for expected user mistakes (bad paths, configs, checkpoints).

Launchers print its message as one line and exit non-zero instead of a traceback."""


class UserError(Exception):
    """A problem with the user's input, described so that the message alone says what to fix."""


EXTRAS = {
    "tune": "s3prl-adapters tune (Optuna, its plots)",
    "postgres": "a PostgreSQL study storage (psycopg)",
    "lab": "run_benchmarks.sh and its reports (Optuna, matplotlib)",
    "cluster": "running on Slurm (submitit)",
    "g2p": "phonemes for words no lexicon has (g2p-en)",
}
"""The optional dependency groups of pyproject.toml, and what each is for."""


def require(module: str, extra: str, what: str):
    """`module`, imported; where it is missing, a UserError that names the extra to install (one line)."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        missing = getattr(e, "name", None) or module
        raise UserError(f"{what} needs {missing}, which is not installed: pip install 's3prl-adapters[{extra}]' "
                        f"({EXTRAS[extra]})") from None
