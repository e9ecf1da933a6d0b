"""The README cannot rot: every command, spec, code snippet and path it shows is checked here.

* Each shell command in a ```sh block is checked by a checker for its program: `gorl-bench`
  commands are parsed by the real argument parser (built from `harness.cli`, not run) and their
  algorithms, tasks, presets, `--set` keys, specs and study names resolved; `make` targets must
  exist in the Makefile; `mlflow` flags must exist in MLflow's own CLI; and so on. A program
  without a checker fails the test, so a new kind of command needs a check too.
* `gorl-bench list` runs for real; `make demo`'s code path runs in tests/test_demo.py.
* TOML blocks are loaded as study specs, the algorithm snippet is executed and registered.
* Paths and links to files of the repository must exist.
"""

from __future__ import annotations

import re
import shlex
import textwrap
import tomllib
from pathlib import Path

import pytest

import algorithms
import envs
from algorithms import registry
from algorithms.config import parse_assignments, resolve
from harness.cli import build_parser, main
from harness.commands.run import apply_defaults
from harness.report import BEST_CONFIG, DEFAULT_OUT
from harness.tracking import DEFAULT_TRACKING_DB, sqlalchemy_url
from studies.spec import SPEC_DIR, load_spec
from studies.storage import DEFAULT_JOURNAL

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]*$")  # STUDY, NAME: stands for a value the reader picks


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README, flags=re.S | re.M)


def shell_commands() -> list[list[str]]:
    """Every command of the ```sh blocks, comments removed, continuation lines joined."""

    commands = []
    for block in blocks("sh"):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                commands.append(words)
    return commands


def inline_gorl_commands() -> list[list[str]]:
    """`gorl-bench ...` in running text; a synopsis's [optional] brackets are dropped."""

    spans = re.findall(r"`(gorl-bench [^`]+)`", README)
    return [shlex.split(span.replace("[", "").replace("]", "")) for span in spans]


def readme_specs(tmp_path: Path) -> dict[str, Path]:
    """The TOML blocks that name their file (`# table1.toml`), written to `tmp_path`."""

    specs = {}
    for block in blocks("toml"):
        first = block.splitlines()[0]
        match = re.fullmatch(r"# (\S+\.toml)", first)
        assert match, f"a TOML block of the README must start with '# <file>.toml', got {first!r}"
        path = tmp_path / match.group(1)
        path.write_text(block)
        specs[match.group(1)] = path
    return specs


def shipped_study_names() -> set[str]:
    names = set()
    for path in SPEC_DIR.glob("*.toml"):
        with path.open("rb") as handle:
            names.add(tomllib.load(handle).get("name", path.stem))
    return names


class Checker:
    """Checks of one README; `outs` remembers `run --out` directories for `run --resume`."""

    def __init__(self, specs: dict[str, Path]) -> None:
        self.parser = build_parser()
        self.specs = specs
        self.studies = shipped_study_names() | {load_spec(p).name for p in specs.values()}
        self.outs: set[Path] = set()

    def check(self, words: list[str]) -> None:
        program = words[0]
        method = {
            "gorl-bench": self.gorl_bench,
            "make": self.make,
            ".": self.activate,
            "pip": self.pip,
            "optuna-dashboard": self.optuna_dashboard,
            "mlflow": self.mlflow,
            "createdb": self.createdb,
        }.get(program)
        assert method is not None, f"no check for README command {shlex.join(words)!r}; add one"
        method(words[1:])

    def gorl_bench(self, argv: list[str]) -> None:
        try:
            args = self.parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"the parser rejects README command: gorl-bench {shlex.join(argv)}")
        if args.command == "run":
            self.run(args)
        elif args.command == "study" and args.action == "run":
            if args.spec.endswith(".toml"):
                assert args.spec in self.specs, f"{args.spec} is not a TOML block of the README"
            elif args.spec not in self.studies:  # a study created from a README spec resumes by name
                load_spec(args.spec)
        elif (args.command, getattr(args, "action", None)) == ("study", "show") or (
            args.command == "config" and not PLACEHOLDER.match(args.algo or "")
        ):
            assert main(argv) == 0, f"gorl-bench {shlex.join(argv)} failed"
        elif args.command == "report" and args.runs:
            for run_dir in args.runs:
                assert run_dir in self.outs, f"report --runs {run_dir} follows no `run --out {run_dir}`"
        elif args.command in ("study", "report"):
            self.study_name(args.name if args.command == "study" else args.study)

    def run(self, args) -> None:
        if args.resume is not None:
            assert args.resume in self.outs, f"--resume {args.resume} follows no `run --out {args.resume}`"
            return
        if args.out is not None:
            self.outs.add(args.out)
        if args.config is not None:  # a run's config.toml, or a tune report's best trial
            report = args.config.parent.parent == DEFAULT_OUT and args.config.name == BEST_CONFIG
            assert report or args.config.parent in self.outs, f"--config {args.config} is no earlier run's"
            return
        if PLACEHOLDER.match(args.algo) or PLACEHOLDER.match(args.task):
            return
        apply_defaults(args)
        spec = algorithms.get(args.algo)
        resolve(spec, args.preset, envs.canonical_task(args.task), parse_assignments(args.overrides))

    def study_name(self, name: str) -> None:
        if not PLACEHOLDER.match(name):
            assert name in self.studies, f"no study spec is named {name!r}"

    def make(self, targets: list[str]) -> None:
        makefile = (ROOT / "Makefile").read_text()
        for target in targets:
            assert re.search(rf"^{re.escape(target)}:", makefile, flags=re.M), f"no make target {target!r}"

    def activate(self, args: list[str]) -> None:
        assert args == [".venv/bin/activate"]
        assert re.search(r"^VENV := \.venv$", (ROOT / "Makefile").read_text(), flags=re.M)

    def pip(self, args: list[str]) -> None:
        assert args[0] == "install"
        extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
        for package in args[1:]:
            assert any(req.startswith(package) for reqs in extras.values() for req in reqs), package

    def optuna_dashboard(self, args: list[str]) -> None:
        # optuna-dashboard opens an existing file as a journal, anything else as an RDB URL.
        (target,) = args
        assert target == str(DEFAULT_JOURNAL) or "://" in target, target
        if target.startswith("postgresql"):
            # What gorl-bench itself opens: SQLAlchemy takes a bare postgresql:// for psycopg 3.
            assert target == sqlalchemy_url(target.replace("+psycopg2", "")), target

    def mlflow(self, args: list[str]) -> None:
        import click
        from mlflow.cli import cli

        command = cli.get_command(click.Context(cli), args[0])
        assert command is not None, f"mlflow has no command {args[0]!r}"
        flags = {opt for param in command.params for opt in param.opts}
        used = [word for word in args[1:] if word.startswith("-")]
        assert set(used) <= flags, f"mlflow {args[0]} has no {sorted(set(used) - flags)}"
        store = args[args.index("--backend-store-uri") + 1]
        if store.startswith("sqlite:///"):
            assert store == f"sqlite:///{DEFAULT_TRACKING_DB}", store

    def createdb(self, args: list[str]) -> None:
        assert len(args) == 1 and args[0].isidentifier(), args


def test_every_shell_command_of_the_readme_is_valid(tmp_path):
    checker = Checker(readme_specs(tmp_path))
    commands = shell_commands()
    assert len(commands) > 20  # the blocks were found
    for words in commands:
        checker.check(words)


def test_gorl_bench_commands_in_the_text_parse(tmp_path):
    checker = Checker(readme_specs(tmp_path))
    for words in shell_commands():  # the runs the text's commands name are started there
        checker.check(words)
    commands = inline_gorl_commands()
    assert commands
    for words in commands:
        checker.check(words)


def test_the_cheap_commands_run(capsys):
    assert ["gorl-bench", "list"] in shell_commands()
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("ppo", "gorl-fm", "cheetah-run", "timescale", "demo"):
        assert name in out


def test_the_readme_study_specs_load(tmp_path):
    specs = readme_specs(tmp_path)
    assert "table1.toml" in specs
    spec = load_spec(specs["table1.toml"])
    assert spec.preset == "paper" and spec.steps == 180_000_000 and spec.tasks == envs.PAPER_TASKS
    # Table 1's PPO column came from the release's baseline, not the paper's stated lr and clip.
    ppo = next(params for label, algo, params in spec.configurations() if algo == "ppo")
    assert dict(ppo) == {"lr": 3e-4, "clip": 0.1}
    tune = load_spec(specs["tune-gorl.toml"])
    assert tune.kind == "tune" and [dim.name for dim in tune.space] == ["num_refits", "decoder_steps"]


def test_the_algorithm_snippet_registers_an_algorithm(monkeypatch):
    snippet, init_line = blocks("python")[:2]
    assert snippet.startswith("# algorithms/my_algo.py")
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))  # keep the real one clean
    exec(compile(snippet, "README snippet", "exec"), {})
    config = resolve(algorithms.get("my-algo"), "cpu", "cheetah-run", {"lr": 1e-3})
    assert (config.lr, config.num_envs) == (1e-3, 32)
    line = textwrap.dedent(init_line).splitlines()[-1]
    assert line.startswith("import algorithms.my_algo  # noqa: E402,F401")
    assert "import algorithms.ppo  # noqa: E402,F401" in (ROOT / "algorithms" / "__init__.py").read_text()


def test_paths_and_names_the_readme_mentions_exist():
    links = re.findall(r"\]\(([^)#]+)\)", README)
    # Repository files are named with their folder; bare names (summary.md) are a report's files.
    code = re.findall(r"`([\w.-]+/[\w./-]+)`", README)
    for path in [p for p in links + code if "://" not in p]:
        if path.startswith("runs/") or path.endswith("table1.toml") or "my_algo" in path:
            continue  # made by a run, or the reader's own file
        assert (ROOT / path).exists(), f"README mentions {path}, which does not exist"
    from envs import tasks, toy

    for name in ("task_names", "score_range", "max_episode_steps"):
        assert hasattr(tasks, name)
    assert hasattr(toy, "TASKS") and hasattr(envs, "FAST_TASKS")
    for study in re.findall(r"`([\w-]+)` \(7 configurations", README):
        assert study in shipped_study_names()
