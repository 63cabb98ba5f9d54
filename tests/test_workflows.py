"""The deploy configuration points at things that exist: GitHub workflows, Procfile, fly.toml.

These files run only on someone else's machine (GitHub, Fly, a Heroku-style host), where a
typo costs a failed deploy. What can be checked here is: the YAML parses into workflows
GitHub accepts, every ``run:`` step calls a script of this repository or a known tool, and
every process command is an ``app`` subcommand whose options parse. (actionlint is not
used: its PyPI wrapper downloads the binary at install time and Debian does not package it.)
"""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml  # type: ignore[import-untyped]

from app.cli import cli
from app.config import PROJECT_ROOT, Settings

WORKFLOWS = PROJECT_ROOT / ".github" / "workflows"
# Commands a run step may call that are not files of this repository.
KNOWN_TOOLS = {"apt-get", "flyctl"}
# A GitHub expression or an environment variable assignment, not a command.
ASSIGNMENT = re.compile(r"^[A-Z_][A-Z0-9_]*=")


def load_workflow(name: str) -> dict[Any, Any]:
    document = yaml.safe_load((WORKFLOWS / name).read_text())
    assert isinstance(document, dict), f"{name} is not a mapping"
    # YAML 1.1 reads the key `on` as the boolean True.
    if True in document:
        document["on"] = document.pop(True)
    return document


def run_commands(script: str) -> list[list[str]]:
    """Each command of a ``run:`` script, split into words (continuations joined)."""
    commands = []
    for line in script.replace("\\\n", " ").splitlines():
        for command in re.split(r"&&|\|\||;", line):
            words = [w for w in shlex.split(command, comments=True) if not ASSIGNMENT.match(w)]
            if words:
                commands.append(words)
    return commands


def app_command(command: str) -> str:
    """Parse ``app ...`` (after VAR=value prefixes) as the CLI would, without running it;
    the subcommand's name. A missing subcommand or a bad option fails the parse."""
    words = [w for w in shlex.split(command) if not ASSIGNMENT.match(w)]
    assert words[:1] == ["app"], f"{command!r} does not run the app command"
    group = typer.main.get_command(cli)
    context = group.make_context("app", words[1:], resilient_parsing=False)
    name, subcommand, args = group.resolve_command(context, words[1:])  # type: ignore[attr-defined]
    subcommand.make_context(name, args, parent=context)
    return str(name)


def fly_config() -> dict[str, Any]:
    return tomllib.loads((PROJECT_ROOT / "fly.toml").read_text())


def seconds(duration: str | int) -> float:
    """A fly.toml duration ("45s", "1m30s" or a number of seconds) in seconds."""
    if isinstance(duration, int):
        return float(duration)
    parts = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", duration)
    assert duration, "empty duration"
    assert parts, f"unreadable duration {duration!r}"
    return int(parts[1] or 0) * 60.0 + int(parts[2] or 0)


@pytest.mark.parametrize("name", ["ci.yml", "deploy.yml"])
def test_workflow_has_triggers_and_jobs_whose_steps_use_or_run(name: str) -> None:
    workflow = load_workflow(name)
    assert workflow["on"], f"{name} has no trigger"
    for job_id, job in workflow["jobs"].items():
        assert job.get("runs-on"), f"{name}: job {job_id} has no runs-on"
        for step in job["steps"]:
            assert ("uses" in step) != ("run" in step), f"{name}: {step} must use or run"


@pytest.mark.parametrize("name", ["ci.yml", "deploy.yml"])
def test_every_run_step_calls_a_script_that_exists_or_a_known_tool(name: str) -> None:
    for job in load_workflow(name)["jobs"].values():
        for step in job["steps"]:
            for command in run_commands(step.get("run", "")):
                program = command[0]
                if "/" in program:
                    path = PROJECT_ROOT / program
                    assert path.is_file(), f"{name}: {program} does not exist"
                    assert path.stat().st_mode & 0o111, f"{name}: {program} is not executable"
                else:
                    assert program in KNOWN_TOOLS, f"{name}: unknown command {program!r}"


def test_ci_runs_scripts_test_on_push_and_pull_request() -> None:
    workflow = load_workflow("ci.yml")
    assert {"push", "pull_request"} <= set(workflow["on"])
    runs = [step.get("run") for job in workflow["jobs"].values() for step in job["steps"]]
    assert "scripts/test" in runs


def test_deploy_follows_a_successful_ci_run_on_main() -> None:
    workflow = load_workflow("deploy.yml")
    trigger = workflow["on"]["workflow_run"]
    assert trigger["workflows"] == [load_workflow("ci.yml")["name"]]
    assert trigger["branches"] == ["main"]
    (job,) = workflow["jobs"].values()
    assert "github.event.workflow_run.conclusion == 'success'" in job["if"]


def test_deploy_runs_flyctl_with_the_fly_api_token_secret() -> None:
    (job,) = load_workflow("deploy.yml")["jobs"].values()
    (step,) = [step for step in job["steps"] if "run" in step]
    assert step["run"] == "flyctl deploy --remote-only"
    assert step["env"]["FLY_API_TOKEN"] == "${{ secrets.FLY_API_TOKEN }}"


def test_procfile_declares_web_worker_and_release_as_app_commands() -> None:
    lines = (PROJECT_ROOT / "Procfile").read_text().splitlines()
    processes = dict(line.split(":", 1) for line in lines if line.strip())
    assert set(processes) == {"web", "worker", "release"}
    assert app_command(processes["web"]) == "serve"
    assert app_command(processes["worker"]) == "worker"
    assert app_command(processes["release"]) == "migrate"


def test_procfile_web_process_listens_on_every_interface() -> None:
    # The router of a Heroku-style host connects from outside the dyno; 127.0.0.1 is unreachable.
    web = next(
        line
        for line in (PROJECT_ROOT / "Procfile").read_text().splitlines()
        if line.startswith("web:")
    )
    assert "HOST=0.0.0.0" in shlex.split(web.removeprefix("web:"))


def test_fly_processes_and_release_command_are_app_commands() -> None:
    config = fly_config()
    assert app_command(config["processes"]["web"]) == "serve"
    assert app_command(config["processes"]["worker"]) == "worker"
    assert app_command(config["deploy"]["release_command"]) == "migrate"


def test_fly_health_check_probes_healthz_on_the_web_processes() -> None:
    service = fly_config()["http_service"]
    assert service["processes"] == ["web"]
    assert [check["path"] for check in service["checks"]] == ["/healthz"]


def test_fly_kill_timeout_outlasts_the_job_shutdown_grace() -> None:
    config = fly_config()
    default = Settings.model_fields["jobs_shutdown_grace"].default
    grace = float(config["env"].get("JOBS_SHUTDOWN_GRACE", default))
    assert config["kill_signal"] == "SIGTERM"
    assert seconds(config["kill_timeout"]) > grace


def test_fly_config_keeps_the_trusted_proxy_header() -> None:
    assert fly_config()["env"]["TRUSTED_PROXY_HEADER"] == "fly-client-ip"


def test_docs_deploy_exists_where_fly_toml_points() -> None:
    assert "docs/deploy.md" in (PROJECT_ROOT / "fly.toml").read_text()
    assert Path(PROJECT_ROOT / "docs" / "deploy.md").is_file()
