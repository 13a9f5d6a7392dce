"""docs/operations.md: every command that needs an engine or a GPU says so; what it names exists."""

from __future__ import annotations

import re

from ops_compose import REPO

DOC = REPO / "docs" / "operations.md"


def code_lines() -> list[str]:
    """Lines of the indented code blocks (the runbook's commands and quoted outputs)."""
    return [line[4:] for line in DOC.read_text().splitlines() if line.startswith("    ")]


def test_commands_that_need_docker_or_a_gpu_are_marked() -> None:
    unmarked = []
    for line in code_lines():
        command = line.strip()
        needs_engine = re.match(r"(docker(-compose)?|nvidia-smi)\b", command) and not re.match(
            r"docker-compose( -f \S+)+( --profile \S+)? config -q\b", command
        )
        if needs_engine and "(needs Docker" not in line and "(needs a GPU" not in line:
            unmarked.append(command)
    assert not unmarked, unmarked


def test_files_and_tests_it_names_exist() -> None:
    text = DOC.read_text()
    for path in re.findall(
        r"`((?:docker|tests/ops|docs)/[\w./-]+|docker-compose[\w.]*\.yml)`", text
    ):
        if path != "docker-compose.override.yml":  # the operator's own file
            assert (REPO / path).exists(), path
    for name in re.findall(r"`(test_\w+)`", text):
        assert re.search(
            rf"def {name}\(",
            "".join(p.read_text() for p in (REPO / "tests" / "ops").glob("test_*.py")),
        ), name
