"""Every command line the README shows names a script that exists, flags that script defines and shipped files
that exist: a renamed flag or config breaks this test, not a reader's first hour."""

import re
from pathlib import Path

import pytest

DOCS = [Path("README.md"), *sorted(Path("docs").glob("*.md"))]
PROGRAMS = (".py", ".sh")
SHIPPED = ("configs/", "scripts/", "docs/")  # paths in commands that must exist (the rest are the user's)
PLACEHOLDER = re.compile(r"[<>]|mine\.yaml|/(ann|bob)\.yaml|\.\.\.")  # the user's own files in examples


def command_lines(text: str) -> list[str]:
    """Lines of ```bash blocks (continuations joined, comments cut) and inline `python ...`/`bash ...` spans."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        lines += [line.split(" #")[0].strip() for line in joined.splitlines() if line.strip()]
    lines += re.findall(r"`((?:python|bash|accelerate launch) [^`]+)`", text)
    parts = [part.strip() for line in lines for part in re.split(r"&&|;", line)]
    return [part for part in parts if re.match(r"(python|bash|accelerate launch|pip)\b", part)]


def words(line: str) -> list[str]:
    """The words of a command with the README's optional-part brackets and alternatives taken apart."""
    return [w for w in re.split(r"[\s\[\]|]+", re.sub(r'"[^"]*"', "", line)) if w]


def program(tokens: list[str]) -> tuple[Path | None, list[str]]:
    for i, token in enumerate(tokens):
        if token.endswith(PROGRAMS):
            return Path(token), tokens[i + 1:]
    return None, []


def commands() -> list[tuple[str, str]]:
    return [(str(doc), line) for doc in DOCS for line in command_lines(doc.read_text())]


@pytest.mark.parametrize("doc,line", commands(), ids=lambda value: value[:60])
def test_command_refers_to_existing_files_and_flags(doc, line):
    path, rest = program(words(line))
    if path is None:
        return  # pip, an accelerate config: nothing of ours
    assert path.is_file(), f"{doc}: `{line}`: {path} does not exist"
    source = path.read_text()
    for token in rest:
        if token.startswith("--") and len(token) > 2:
            flag = token.split("=")[0].rstrip(",.")
            defined = f'"{flag}"' in source if path.suffix == ".py" else re.search(rf"{flag}\b", source)
            assert defined, f"{doc}: `{line}`: {path} has no {flag}"
        elif token.startswith(SHIPPED) and not PLACEHOLDER.search(token):
            target = token.split("=")[-1].rstrip(",.;:)")
            assert Path(target).exists(), f"{doc}: `{line}`: {target} does not exist"


def test_the_readme_has_commands_to_check():
    assert len(command_lines(Path("README.md").read_text())) >= 10
