"""The README and docs/ cannot drift from the code: every flag they name exists in that command's parser,
every -g key and config key they name exists, every relative link resolves, every rendered table equals
its rendering from the file its command wrote, and the README stays short with the two commands first."""

import ast
import glob
import os
import re
import shlex

import pytest
import yaml

from conftest import REPO
from s3prl_adapters.tools.render import render_spec, rendered_blocks

DOCS = [os.path.join(REPO, "README.md"), os.path.join(REPO, "CHANGELOG.md")] + sorted(
    glob.glob(os.path.join(REPO, "docs", "*.md")))


def _text(path):
    return open(path).read()


def test_readme_is_short_and_starts_with_the_two_commands():
    lines = _text(os.path.join(REPO, "README.md")).splitlines()
    assert len(lines) <= 150, len(lines)
    assert lines[0] == "```bash" and lines[3] == "```"
    assert lines[1].startswith("./run_benchmarks.sh ") and lines[2].startswith("bash scripts/test.sh ")


@pytest.mark.parametrize("path", DOCS, ids=[os.path.relpath(p, REPO) for p in DOCS])
def test_relative_links_resolve(path):
    for target in re.findall(r"\]\(([^)\s]+)\)", _text(path)):
        if target.startswith(("http://", "https://", "mailto:", "#")):
            continue
        file = target.split("#", 1)[0]
        assert os.path.exists(os.path.join(os.path.dirname(path), file)), f"{os.path.relpath(path, REPO)}: {target}"


@pytest.mark.parametrize("path", DOCS, ids=[os.path.relpath(p, REPO) for p in DOCS])
def test_rendered_tables_equal_their_files(path):
    text = _text(path)
    for spec, start, end in rendered_blocks(text):
        assert text[start:end] == render_spec(spec, REPO), f"{os.path.relpath(path, REPO)}: '{spec}' is stale " \
                                                           f"(python scripts/render_docs.py renders it again)"


# ---- flags -----------------------------------------------------------------------------------------

def _s3prl_launcher_flags():
    import s3prl

    tree = ast.parse(open(os.path.join(os.path.dirname(s3prl.__file__), "run_downstream.py")).read())
    flags = {a.value for node in ast.walk(tree) if isinstance(node, ast.Call) and getattr(node.func, "attr", "") ==
             "add_argument" for a in node.args if isinstance(a, ast.Constant) and str(a.value).startswith("-")}
    return flags | {"--ddp_timeout", "--debug", "-h", "--help"}  # ours (bridge/launcher.py)


def _parsers():
    from s3prl_adapters.tools import bench, benchmark, cli, tune

    def options(parser):
        return {s for action in parser._actions for s in action.option_strings}

    top = cli.build_parser()
    sub = next(a for a in top._actions if a.__class__.__name__ == "_SubParsersAction")
    commands = {name: options(p) for name, p in sub.choices.items()}
    commands["bench"], commands["tune"] = options(bench.build_parser()), options(tune.build_parser())
    return options(top), commands, options(benchmark.build_parser()), _s3prl_launcher_flags()


def _command_lines(text):
    """Shell-ish lines of fenced code blocks (continuations joined) and inline code spans."""
    lines = []
    for block in re.findall(r"```(?:bash|sh)?\n(.*?)```", text, re.S):
        lines += block.replace("\\\n", " ").splitlines()
    lines += re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    return [line.split(" #")[0] for line in lines]


def _tokens(line):
    try:
        return shlex.split(line)
    except ValueError:  # an unbalanced quote in a shortened example
        return line.split()


def _named_flags(paths):
    """(doc, command, flag) for every flag after a command name on a line of the docs."""
    found = []
    for path in paths:
        for line in _command_lines(_text(path)):
            tokens = _tokens(line)
            for k, token in enumerate(tokens):
                name = os.path.basename(token.rstrip(")"))
                if name == "s3prl-adapters":
                    sub = tokens[k + 1] if k + 1 < len(tokens) and not tokens[k + 1].startswith("-") else None
                    command = f"s3prl-adapters {sub}" if sub else "s3prl-adapters"
                elif name in ("run_benchmarks.sh", "run_downstream.py"):
                    command = name
                else:
                    continue
                for later in tokens[k + 1:]:
                    if later in ("|", "&&", ";") or os.path.basename(later.rstrip(")")) in (
                            "s3prl-adapters", "run_benchmarks.sh", "run_downstream.py"):
                        break
                    if re.fullmatch(r"--?[A-Za-z][\w-]*(=.*)?", later):
                        found.append((os.path.relpath(path, REPO), command, later.split("=")[0]))
    return found


def _listed_flags():
    """Flags the docs list without the command before each: the benchmark page's flag table and the
    tune page's "Flags:" paragraph."""
    found = []
    for line in _text(os.path.join(REPO, "docs", "benchmark.md")).splitlines():
        if line.startswith("| `-"):
            cell = line.split("|")[1]
            found += [("docs/benchmark.md", "run_benchmarks.sh", f) for f in re.findall(r"`(--?[\w-]+)", cell)]
    text = _text(os.path.join(REPO, "docs", "learning-rates.md"))
    paragraph = text.split("\nFlags: ", 1)[1].split("\n\n", 1)[0]
    found += [("docs/learning-rates.md", "s3prl-adapters tune", f) for f in re.findall(r"`(--?[\w-]+)", paragraph)]
    return found


def test_every_flag_the_docs_name_exists():
    top, commands, benchmark, launcher = _parsers()
    listed = _listed_flags()
    assert len(listed) > 20
    named = _named_flags(DOCS) + listed
    assert len(named) > 60  # the docs do name flags: the check reads them
    wrong = []
    for doc, command, flag in named:
        if command == "run_benchmarks.sh":
            ok = flag in benchmark or flag in ("-h", "--help")
        elif command == "run_downstream.py":
            ok = flag in launcher
        elif command == "s3prl-adapters":
            ok = flag in top
        else:
            sub = command.split()[1]
            ok = sub in commands and flag in commands[sub]
        if not ok:
            wrong.append(f"{doc}: {command} {flag}")
    assert not wrong, wrong


def test_every_subcommand_the_docs_name_exists():
    _, commands, _, _ = _parsers()
    named = {command.split()[1] for _, command, _ in _named_flags(DOCS) if " " in command}
    for path in DOCS:
        named |= set(re.findall(r"s3prl-adapters ([a-z][a-z0-9-]+)", _text(path)))
    assert not named - set(commands), sorted(named - set(commands))


# ---- -g keys and config keys ------------------------------------------------------------------------

def _config_keys():
    """Every key path of the shipped configs, and of the sections this package adds."""
    from dataclasses import fields

    from s3prl_adapters.bridge.feature_cache import FeatureCacheConfig

    paths = set()

    def walk(prefix, node):
        if isinstance(node, dict):
            for key, value in node.items():
                paths.add(f"{prefix}{key}")
                walk(f"{prefix}{key}.", value)

    for config in glob.glob(os.path.join(REPO, "downstream_configs", "*", "*.yaml")):
        walk("", yaml.safe_load(open(config)))
    for section in ("feature_cache", "prefix_cache"):
        paths |= {section} | {f"{section}.{f.name}" for f in fields(FeatureCacheConfig)}
    from s3prl_adapters.bridge.compat import RUNNER_KEYS

    paths |= {"preflight", "runner.train_dataloader", "runner.fp16", "scheduler", "scheduler.name"}
    paths |= {f"runner.{key}" for key in RUNNER_KEYS}  # the runner keys this package reads
    return paths


def _adapter_keys():
    from dataclasses import fields

    from s3prl_adapters.method.config import AdapterConfig

    return {f.name for f in fields(AdapterConfig) if f.name != "method"}


def test_the_g_table_lists_every_adapter_setting():
    text = _text(os.path.join(REPO, "docs", "upstreams.md"))
    table = text.split("## Adapter settings", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^\| `(\w+)` \|", table, re.M))
    assert listed == _adapter_keys()


SECTIONS = ("runner", "optimizer", "downstream_expert", "adapter_optimizer", "backbone_dropout", "prefix_cache",
            "feature_cache", "scheduler", "specaug", "preflight")


def test_every_config_key_and_g_key_the_docs_name_exists():
    from s3prl_adapters.bridge.optimizer_groups import GROUPS, STOCK_GROUPS
    from s3prl_adapters.bridge.hubconf import UPSTREAMS

    config = _config_keys()
    adapter = _adapter_keys()
    known_names = set(UPSTREAMS) | {"wavlm_local"} | set(GROUPS) | set(STOCK_GROUPS)
    wrong, checked = [], 0
    for path in DOCS:
        for span in re.findall(r"`([^`\n]+)`", _text(path)):
            for key in re.findall(r"(?:^|[\s\"'(])(?:config\.)?((?:%s)(?:\.[\w<>-]+)*)" % "|".join(SECTIONS), span):
                parts = key.split(".")
                pattern = re.compile("^" + r"\.".join("[^.]+" if re.fullmatch(r"<[^>]+>|X|\*", p) else re.escape(p)
                                                      for p in parts) + "$")
                checked += 1
                if not any(pattern.match(c) for c in config) and not (
                        parts[0] in ("adapter_optimizer", "backbone_dropout") and all(p in known_names or p.startswith("<")
                                                                                      for p in parts[1:])):
                    wrong.append(f"{os.path.relpath(path, REPO)}: {key}")
            match = re.fullmatch(r"([a-z_]+): \S.*", span.strip())
            if match and match.group(1) not in adapter | {k.split(".")[-1] for k in config} | {"backbone_dropout"}:
                wrong.append(f"{os.path.relpath(path, REPO)}: `{span}`")
    assert checked > 20 and not wrong, wrong
