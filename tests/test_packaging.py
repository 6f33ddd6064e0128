"""The workspace layout: one ``ferrotunnel`` namespace shared by independently built
distributions, layered protocol <- core <- cli."""

from __future__ import annotations

import ast
import importlib.util
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

import ferrotunnel

ROOT = Path(__file__).resolve().parent.parent
DISTRIBUTIONS = sorted(p for p in ROOT.glob("ferrotunnel-*") if p.is_dir())
PARTS = [d.name.removeprefix("ferrotunnel-") for d in DISTRIBUTIONS]

# which workspace distributions each one may depend on (exactly these)
LAYERS = {
    "ferrotunnel-protocol": set[str](),
    "ferrotunnel-core": {"ferrotunnel-protocol"},
    "ferrotunnel-http": {"ferrotunnel-core"},
    "ferrotunnel-cli": {"ferrotunnel-core", "ferrotunnel-http"},
    "ferrotunnel-plugins": {"ferrotunnel-core"},
    "ferrotunnel-observability": {"ferrotunnel-core"},
}


def _pyproject(dist: Path) -> dict[str, Any]:
    with (dist / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)


def _requirement_names(project: dict[str, Any]) -> set[str]:
    requirements = list(project.get("dependencies", []))
    for extra in project.get("optional-dependencies", {}).values():
        requirements += extra
    names = set()
    for requirement in requirements:
        match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
        assert match, requirement
        names.add(re.sub(r"[-_.]+", "-", match.group(1)).lower())
    return names


def test_the_workspace_members_are_the_ferrotunnel_folders() -> None:
    assert [d.name for d in DISTRIBUTIONS] == sorted(LAYERS)
    with (ROOT / "pyproject.toml").open("rb") as f:
        root = tomllib.load(f)
    assert sorted(root["tool"]["uv"]["workspace"]["members"]) == sorted(LAYERS)


@pytest.mark.parametrize("dist", DISTRIBUTIONS, ids=lambda d: d.name)
def test_no_distribution_ships_the_namespace_init(dist: Path) -> None:
    namespace = dist / "src" / "ferrotunnel"
    assert namespace.is_dir()
    assert not (namespace / "__init__.py").exists(), (
        f"{namespace}/__init__.py would shadow the other ferrotunnel-* distributions"
    )


def test_ferrotunnel_is_a_namespace_package() -> None:
    spec = importlib.util.find_spec("ferrotunnel")
    assert spec is not None
    locations = list(spec.submodule_search_locations or [])
    assert len(locations) > 1, locations
    assert getattr(ferrotunnel, "__file__", None) is None
    for part in PARTS:
        assert importlib.util.find_spec(f"ferrotunnel.{part}") is not None, part


@pytest.mark.parametrize("dist", DISTRIBUTIONS, ids=lambda d: d.name)
def test_distribution_layout(dist: Path) -> None:
    data = _pyproject(dist)
    project = data["project"]
    part = dist.name.removeprefix("ferrotunnel-")
    assert project["name"] == dist.name
    build = data["build-system"]
    assert build["build-backend"] == "hatchling.build"
    assert any(req.startswith("hatchling") for req in build["requires"])
    assert data["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"] == ["src/ferrotunnel"]
    package = dist / "src" / "ferrotunnel" / part
    assert (package / "__init__.py").is_file()
    assert (package / "py.typed").is_file()
    # nothing else lives in the namespace folder of this distribution
    others = {p.name for p in (dist / "src" / "ferrotunnel").iterdir()} - {part, "__pycache__"}
    assert not others, others


@pytest.mark.parametrize("dist", DISTRIBUTIONS, ids=lambda d: d.name)
def test_dependency_direction(dist: Path) -> None:
    project = _pyproject(dist)["project"]
    workspace_deps = {n for n in _requirement_names(project) if n.startswith("ferrotunnel")}
    assert workspace_deps == LAYERS[dist.name]
    # pinned to the version the sibling really has
    versions = {d.name: _pyproject(d)["project"]["version"] for d in DISTRIBUTIONS}
    for requirement in project.get("dependencies", []):
        for name in workspace_deps:
            if requirement.startswith(name):
                assert requirement == f"{name}=={versions[name]}", requirement


@pytest.mark.parametrize("dist", DISTRIBUTIONS, ids=lambda d: d.name)
def test_imports_follow_the_dependency_direction(dist: Path) -> None:
    """Source code imports only its own part and the parts below it (what its pyproject
    depends on, directly or through them): never upwards or sideways."""
    below: set[str] = set()
    todo = set(LAYERS[dist.name])
    while todo:
        name = todo.pop()
        below.add(name)
        todo |= LAYERS[name] - below
    part = dist.name.removeprefix("ferrotunnel-")
    allowed = {part} | {d.removeprefix("ferrotunnel-") for d in below}
    for source in (dist / "src").rglob("*.py"):
        tree = ast.parse(source.read_text(encoding="utf-8"), str(source))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                head, _, rest = module.partition(".")
                if head == "ferrotunnel":
                    target = rest.partition(".")[0]
                    assert target in allowed, f"{source}: imports {module}"
