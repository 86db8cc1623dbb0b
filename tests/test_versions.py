"""The declared minimums: ``constraints/minimum.txt`` pins every direct dependency to its lower
bound in ``pyproject.toml``, so that the run on the minimums tests what the bounds promise."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = ROOT / "pyproject.toml"
MINIMUM = ROOT / "constraints" / "minimum.txt"
# The extras the run on the minimums installs; dev's linters run on the newest releases only.
PINNED_EXTRAS = ("speed", "redis", "test", "bench")

_TABLE = re.compile(r"^\[([^\[\]]+)\]\s*$")
_ARRAY = re.compile(r"^([A-Za-z0-9_-]+)\s*=\s*\[(.*?)\]\s*$", re.MULTILINE | re.DOTALL)
_REQUIREMENT = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*(.*)$")
_LOWER_BOUND = re.compile(r">=\s*([^,;\s]+)")
_PIN = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s,;]+)")


def string_arrays(text: str) -> dict[str, dict[str, list[str]]]:
    """The arrays of strings of a TOML file such as pyproject.toml, by table and key.

    Enough TOML for this file (tomllib is Python 3.11's): tables, and arrays of double-quoted
    strings written on one line or one item a line, with comment lines between them.
    """
    tables: dict[str, list[str]] = {"": []}
    current = tables[""]
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        header = _TABLE.match(line)
        if header:
            current = tables.setdefault(header[1].strip(), [])
        else:
            current.append(line)
    return {
        table: {match[1]: re.findall(r'"([^"]*)"', match[2]) for match in _ARRAY.finditer("\n".join(lines))}
        for table, lines in tables.items()
    }


def canonical(name: str) -> str:
    """A distribution's name as installers compare it (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def lower_bounds(requirements: list[str]) -> dict[str, str]:
    """Each requirement's lower bound (its ``>=`` version), by canonical name."""
    bounds: dict[str, str] = {}
    for requirement in requirements:
        match = _REQUIREMENT.match(requirement.strip())
        assert match, f"not a requirement: {requirement!r}"
        bound = _LOWER_BOUND.search(match[2].partition(";")[0])
        assert bound, f"{requirement!r} declares no lower bound (>=)"
        name = canonical(match[1])
        assert bounds.setdefault(name, bound[1]) == bound[1], f"two lower bounds for {name}"
    return bounds


def declared_lower_bounds(text: str) -> dict[str, str]:
    """The lower bound of every direct dependency of the core and of the pinned extras."""
    arrays = string_arrays(text)
    extras = arrays["project.optional-dependencies"]
    requirements = list(arrays["project"]["dependencies"])
    for extra in PINNED_EXTRAS:
        requirements += extras[extra]
    return lower_bounds(requirements)


def pins(text: str) -> dict[str, str]:
    """``name==version`` lines of a constraints file, by canonical name."""
    pinned: dict[str, str] = {}
    for line in text.splitlines():
        line = line.partition("#")[0].strip()
        if not line:
            continue
        pin = _PIN.fullmatch(line)
        assert pin, f"not a name==version pin: {line!r}"
        name = canonical(pin[1])
        assert name not in pinned, f"{name} is pinned twice"
        pinned[name] = pin[2]
    return pinned


def test_every_direct_dependency_is_pinned_to_its_lower_bound() -> None:
    declared = declared_lower_bounds(PYPROJECT.read_text())
    pinned = pins(MINIMUM.read_text())
    assert {"starlette", "uvicorn", "websockets", "pytest", "redis"} <= declared.keys()
    assert pinned == declared


def test_the_readers_find_every_bound_and_pin_and_refuse_what_they_cannot_read() -> None:
    text = """
[project]
name = "x"
dependencies = [
  # a comment with [brackets]
  "Foo_Bar>=1.2",
  "baz[extra]>=0.3; python_version < '3.11'",
]

[project.optional-dependencies]
speed = ["uvloop>=0.19; sys_platform != 'win32'"]
redis = []
test = ["pytest>=8,<10"]
bench = ["psutil>=5.9"]
dev = ["x[test,speed]", "mypy>=1"]
"""
    assert declared_lower_bounds(text) == {
        "foo-bar": "1.2",
        "baz": "0.3",
        "uvloop": "0.19",
        "pytest": "8",
        "psutil": "5.9",
    }
    assert pins("# header\nFoo.Bar==1.2  # why\n\nbaz==0.3\n") == {"foo-bar": "1.2", "baz": "0.3"}
    with pytest.raises(AssertionError, match="no lower bound"):
        lower_bounds(["starlette<1"])
    with pytest.raises(AssertionError, match="two lower bounds"):
        lower_bounds(["fastapi>=0.115", "fastapi>=0.116"])
    with pytest.raises(AssertionError, match="name==version"):
        pins("starlette>=0.40\n")
    with pytest.raises(AssertionError, match="pinned twice"):
        pins("starlette==0.40\nStarlette==0.41\n")


def test_the_reader_of_pyproject_agrees_with_a_toml_parser() -> None:
    tomllib = pytest.importorskip("tomllib", reason="tomllib is Python 3.11's")
    text = PYPROJECT.read_text()
    project = tomllib.loads(text)["project"]
    arrays = string_arrays(text)
    assert arrays["project"]["dependencies"] == project["dependencies"]
    assert arrays["project.optional-dependencies"] == project["optional-dependencies"]


def test_the_development_caps_match_the_fast_protocols_supported_ranges() -> None:
    from rtkit import uvicorn_protocol

    caps = dict(
        re.findall(
            r"^([A-Za-z0-9_-]+)<([^\s]+)$", (ROOT / "constraints" / "tested.txt").read_text(), re.MULTILINE
        )
    )
    supported = {
        "uvicorn": uvicorn_protocol.SUPPORTED_UVICORN[1],
        "websockets": uvicorn_protocol.SUPPORTED_WEBSOCKETS[1],
    }
    assert caps == {name: ".".join(map(str, beyond)) for name, beyond in supported.items()}
