"""The generated service keeps its shape: imports run one way between its parts, and the list
of limiting algorithms is defined once and agreed on everywhere it is named."""

import ast
import json
import re
from pathlib import Path

import pytest

from .conftest import SERVICE_TEMPLATE, TEMPLATE, bake_ok

# Each part of the generated package (a top-level module or subpackage) and its floor: a part
# imports only from parts on lower floors, or from inside itself. observability, outages,
# refusals and problems are leaves anyone may use; plans knows nothing of the limiter; the
# limiter knows nothing of the routes and the app that use it.
FLOORS = {
    "settings": 0,
    "outages": 0,
    "refusals": 0,
    "problems": 0,
    "gc_tuning": 0,
    "observability": 1,
    "database": 1,
    "plans": 2,
    "migrations": 3,
    "ratelimit": 4,
    "api": 5,
    "main": 6,
    "dev": 6,
    "cli": 7,
    "__main__": 8,
    # The limit grammar is the plans' (a domain type), yet settings validates limits with it:
    # a leaf that imports nothing of the service, below settings.
    "plans.grammar": -1,
}

# Inside ratelimit, its three rooms and their wiring, on floors of their own: the rules (what
# applies, what a count decided: pure) know nothing of how hits are counted, the counters
# nothing of the HTTP edge, and none of them the wiring (service.py) or the package's face.
RATELIMIT_FLOORS = {
    "ratelimit.rules": 4.1,
    "ratelimit.counters": 4.2,
    "ratelimit.http": 4.3,
    "ratelimit.service": 4.4,
    "ratelimit": 4.5,  # ratelimit/__init__.py: what the rest of the service imports
}
FLOORS.update(RATELIMIT_FLOORS)


def _part(module: tuple[str, ...]) -> str:
    if ".".join(module[:2]) in FLOORS:
        return ".".join(module[:2])
    return module[0] if module else "__init__"


def imports_between_parts(package_dir: Path) -> list[tuple[str, str, str]]:
    """(importing file, its part, the part it imports) for every import between parts."""
    package = package_dir.name
    found = []
    for path in sorted(package_dir.rglob("*.py")):
        here = path.relative_to(package_dir).with_suffix("").parts
        if here[-1] == "__init__":
            here = here[:-1]
            base = here
        else:
            base = here[:-1]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[tuple[str, ...]] = []
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    origin = base[: len(base) - (node.level - 1)]
                    module = (*origin, *(node.module.split(".") if node.module else ()))
                    if node.module is None:  # from . import x: x is a module of that package
                        targets = [(*module, alias.name) for alias in node.names]
                    else:
                        targets = [module]
                elif node.module and node.module.split(".")[0] == package:
                    targets = [tuple(node.module.split(".")[1:])]
            elif isinstance(node, ast.Import):
                targets = [
                    tuple(alias.name.split(".")[1:])
                    for alias in node.names
                    if alias.name.split(".")[0] == package
                ]
            for target in targets:
                if _part(target) != _part(here):
                    found.append((str(path.relative_to(package_dir)), _part(here), _part(target)))
    return found


@pytest.fixture(scope="module")
def package_dir(tmp_path_factory) -> Path:
    from cookiecutter.main import cookiecutter

    out = tmp_path_factory.mktemp("layout")
    project = Path(cookiecutter(str(TEMPLATE), no_input=True, output_dir=str(out)))
    return project / "src" / project.name.replace("-", "_")


def _parts_in(folder: Path) -> set[str]:
    return {
        path.stem if path.is_file() else path.name
        for path in folder.iterdir()
        if (path.suffix == ".py" and path.stem != "__init__") or (path / "__init__.py").exists()
    }


def test_every_part_of_the_package_has_a_floor(package_dir):
    assert _parts_in(package_dir) == {part for part in FLOORS if "." not in part}


def test_the_limiter_is_three_rooms_and_their_wiring(package_dir):
    # Every module of ratelimit/ lives in a room (or is the wiring): none left beside them.
    rooms = {f"ratelimit.{part}" for part in _parts_in(package_dir / "ratelimit")}
    assert rooms == set(RATELIMIT_FLOORS) - {"ratelimit"}


def test_imports_run_one_way_between_the_parts_of_the_service(package_dir):
    imports = imports_between_parts(package_dir)
    assert imports, "the import scan found nothing: it is broken"
    upward = [
        f"{file}: {part} imports {target}"
        for file, part, target in imports
        if FLOORS.get(target, 99) >= FLOORS[part]
    ]
    assert upward == []


def test_the_import_scan_sees_an_import_running_back_up(package_dir, tmp_path):
    # The check above must be able to fail: the same scan, with one import against the order.
    copy = tmp_path / package_dir.name
    copy.mkdir()
    for path in package_dir.rglob("*.py"):
        target = copy / path.relative_to(package_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(path.read_text())
    metrics = copy / "observability" / "metrics.py"
    metrics.write_text("from ..ratelimit import limiter\n" + metrics.read_text())
    # And one inside the limiter: the rules reaching up into the HTTP edge.
    applied = copy / "ratelimit" / "rules" / "applied.py"
    applied.write_text("from ..http.route import RateLimitedRoute\n" + applied.read_text())
    found = imports_between_parts(copy)
    assert ("observability/metrics.py", "observability", "ratelimit") in found
    assert ("ratelimit/rules/applied.py", "ratelimit.rules", "ratelimit.http") in found
    upward = [(part, target) for _, part, target in found if FLOORS[target] >= FLOORS[part]]
    assert ("ratelimit.rules", "ratelimit.http") in upward


def strategies_in_settings(package_dir: Path) -> list[str]:
    tree = ast.parse((package_dir / "settings.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == "Strategy" for target in node.targets
        ):
            return [element.value for element in node.value.slice.elts]  # Literal[...]
    raise AssertionError("settings.py defines no Strategy")


def test_the_strategy_list_is_the_same_everywhere(cookies, package_dir):
    defined = strategies_in_settings(package_dir)
    asked = json.loads((TEMPLATE / "cookiecutter.json").read_text())["ratelimit_strategy"]
    hook = (TEMPLATE / "hooks" / "pre_gen_project.py").read_text()
    checked = re.search(r'"ratelimit_strategy": \(([^)]*)\)', hook)
    lua = (package_dir / "ratelimit" / "counters" / "check.lua").read_text()
    assert checked, "the pre-generation hook no longer lists the strategies it accepts"
    assert asked == defined
    assert re.findall(r'"([a-z-]+)"', checked[1]) == defined
    # check.lua decides each strategy in one branch, and admits hits in another for most
    # (and has one more, for concurrency limits: requests in flight, whatever the strategy).
    assert set(re.findall(r"strategy == '([a-z-]+)'", lua)) == {*defined, "concurrency"}
    # The baked tests import the list (settings.STRATEGIES) rather than keep copies of it.
    copies = [
        path.name
        for path in (SERVICE_TEMPLATE / "tests").glob("*.py")
        if re.search(r'\["moving-window", "[a-z-]+"', path.read_text())
    ]
    assert copies == [], f"these tests keep their own list of strategies: {copies}"
    # And every answer bakes a service whose settings accept it.
    for strategy in asked:
        baked = bake_ok(cookies, {"ratelimit_strategy": strategy})
        assert (
            f'ratelimit_strategy: Strategy = "{strategy}"'
            in (baked / "src" / baked.name.replace("-", "_") / "settings.py").read_text()
        )
