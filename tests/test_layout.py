"""The house rules: which part of the package may import which, and what a DAG parse costs.

The import graph is read from the source (every ``import``, also those inside functions, since a
lazy import is still a dependency), so a new module cannot break the layout unnoticed.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from airflow_provider_smspartner.utils.connection import EXTRA_FIELDS
from tests.conftest import PROJECT_ROOT

PACKAGE = "airflow_provider_smspartner"
PACKAGE_DIR = PROJECT_ROOT / PACKAGE

#: Which parts each part may import (besides itself). "" is the package root (its version only).
ALLOWED: dict[str, set[str]] = {
    "": set(),
    "exceptions": set(),
    "get_provider_info": {"", "utils"},
    "phone_numbers": set(),
    "sandbox": set(),
    # The API server's plugin: Airflow only.
    "plugins": set(),
    # The ground floors: what several rooms share (utils) and the warehouse layer (sql). They may
    # read each other (the lineage names tables; the writer takes the default chunk size) where no
    # cycle forms (test_no_cycles).
    "utils": {"exceptions", "sql"},
    "sql": {"exceptions", "utils"},
    # The hook's transport (contract, throttles, shared rate limit, retry log): only hooks import it.
    "api": {"exceptions", "utils"},
    # The hook's stop-list frame carries phone_e164, so the hook also reads phone_numbers (a leaf).
    "hooks": {"", "api", "exceptions", "utils", "phone_numbers"},
    "bulk": {"exceptions", "hooks", "phone_numbers", "sql", "utils"},
    # The gate's engine streams the audience through bulk.sources (RowChunks, rows_from_file).
    "suppression": {"bulk", "exceptions", "hooks", "phone_numbers", "sql", "utils"},
    "operators": {"exceptions", "hooks", "bulk", "phone_numbers", "sql", "suppression", "utils"},
    "transfers": {"exceptions", "hooks", "phone_numbers", "sql", "utils"},
    # The event trigger polls through the hook and reads the extract's run log (sql, utils).
    "triggers": {"exceptions", "hooks", "sql", "utils"},
}
#: Loaded at DAG-parse time by nothing but execute(): the DAG processor must not pay for them.
HEAVY = ("pandas", "numpy", "pyarrow", "phonenumbers", "sqlalchemy")
#: The modules the DAG processor imports when a DAG uses the provider.
PARSE_TIME_MODULES = (
    f"{PACKAGE}.hooks.smspartner",
    f"{PACKAGE}.operators.smspartner",
    f"{PACKAGE}.transfers.smspartner_to_sql",
    f"{PACKAGE}.transfers.phone_numbers_to_sql",
    f"{PACKAGE}.triggers.smspartner",
)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PROJECT_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _part(module: str) -> str:
    """``airflow_provider_smspartner.bulk.runner`` -> ``bulk``; the root package -> ``""``."""
    rest = module.removeprefix(PACKAGE).lstrip(".")
    return rest.split(".")[0]


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The package modules ``path`` imports (``from pkg import sub`` counts as importing ``sub``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith(PACKAGE))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(PACKAGE):
            assert node.level == 0, f"{path}: use absolute imports"
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                found.add(child if child in modules else node.module)
    return found


def _import_graph() -> dict[str, set[str]]:
    paths = {_module_name(p): p for p in PACKAGE_DIR.rglob("*.py")}
    modules = set(paths)
    return {name: _imports(path, modules) - {name} for name, path in paths.items()}


#: The house's size rules (issue 20): a module a newcomer can read, a function that fits a screen.
MAX_MODULE_LINES = 600
#: ``get_provider_info`` is a 62-line dict literal: "about 60".
MAX_FUNCTION_LINES = 62


class TestSizes:
    def test_no_module_over_600_lines(self):
        sizes = {p: p.read_text().count("\n") for p in PACKAGE_DIR.rglob("*.py")}
        assert not {str(p): n for p, n in sizes.items() if n > MAX_MODULE_LINES}

    def test_no_function_over_about_60_lines(self):
        long = []
        for path in PACKAGE_DIR.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    length = (node.end_lineno or node.lineno) - node.lineno + 1
                    if length > MAX_FUNCTION_LINES:
                        long.append(f"{path.relative_to(PROJECT_ROOT)}:{node.lineno} {node.name} ({length})")
        assert not long


class TestImportGraph:
    def test_every_part_is_known(self):
        parts = {_part(module) for module in _import_graph()}
        assert parts == set(ALLOWED), "a new top-level module or folder needs a place in ALLOWED"

    def test_parts_import_only_what_the_layout_allows(self):
        breaches = [
            f"{module} imports {target}"
            for module, targets in sorted(_import_graph().items())
            for target in sorted(targets)
            if _part(target) != _part(module) and _part(target) not in ALLOWED[_part(module)]
        ]
        assert not breaches, "\n".join(breaches)

    def test_operators_and_transfers_are_imported_by_nothing(self):
        importers = [
            f"{module} imports {target}"
            for module, targets in _import_graph().items()
            for target in targets
            if _part(target) in ("operators", "transfers") and _part(module) != _part(target)
        ]
        assert not importers

    def test_no_cycles(self):
        graph = _import_graph()
        done: set[str] = set()

        def visit(module: str, path: list[str]) -> None:
            if module in path:
                cycle = [*path[path.index(module) :], module]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if module in done:
                return
            for target in sorted(graph.get(module, ())):
                # Importing a submodule runs its parent package first; that is not a cycle.
                if not module.startswith(target + "."):
                    visit(target, [*path, module])
            done.add(module)

        for module in sorted(graph):
            visit(module, [])


def _new_modules_after(module: str, baseline: str) -> dict:
    """Import ``baseline`` then ``module`` in a fresh interpreter; return what ``module`` added."""
    script = (
        "import importlib, json, sys, time\n"
        f"importlib.import_module({baseline!r})\n"
        "before = set(sys.modules)\n"
        "started = time.perf_counter()\n"
        f"importlib.import_module({module!r})\n"
        "print(json.dumps({'new': sorted(set(sys.modules) - before),"
        " 'seconds': time.perf_counter() - started}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # a child interpreter
class TestDagParseCost:
    @pytest.mark.parametrize("module", PARSE_TIME_MODULES, ids=lambda m: m.rsplit(".", 2)[-2])
    def test_no_heavy_imports_beyond_the_task_sdk(self, module):
        new = _new_modules_after(module, "airflow.sdk")["new"]
        heavy = sorted(name for name in new if name.split(".")[0] in HEAVY)
        assert not heavy, f"importing {module} loads {heavy[:8]}: import them inside execute()"

    @pytest.mark.parametrize(
        "dag_file", sorted((PROJECT_ROOT / "example_dags").glob("*.py")), ids=lambda path: path.stem
    )
    def test_example_dags_parse_without_heavy_imports(self, dag_file):
        # smspartner_taskflow_join loaded pandas, pyarrow and phonenumbers at parse time (616 ms).
        script = (
            "import json, runpy, sys\n"
            "import airflow.sdk\n"
            "before = set(sys.modules)\n"
            f"runpy.run_path({str(dag_file)!r})\n"
            "print(json.dumps(sorted(set(sys.modules) - before)))\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
        )
        assert result.returncode == 0, result.stderr[-2000:]
        new = json.loads(result.stdout.strip().splitlines()[-1])
        heavy = sorted(name for name in new if name.split(".")[0] in HEAVY)
        assert not heavy, f"parsing {dag_file.name} loads {heavy[:8]}: import them inside the tasks"

    def test_provider_info_does_not_import_airflow(self):
        # Airflow imports get_provider_info while it is itself being imported (provider discovery).
        new = _new_modules_after(f"{PACKAGE}.get_provider_info", "json")["new"]
        assert not [name for name in new if name.split(".")[0] in ("airflow", *HEAVY)]


class TestOneSpecOfTheExtras:
    def _docs_rows(self) -> dict[str, tuple[str, str]]:
        """The extras table of the connection page (``docs/connection.md``)."""
        text = (PROJECT_ROOT / "docs" / "connection.md").read_text(encoding="utf-8")
        section = text.split("| extra | default | meaning |", 1)[1].split("\n\n", 1)[0]
        rows = re.findall(r"^\| `(\w+)` \| ([^|]+) \| ([^|]+) \|$", section, flags=re.M)
        return {name: (default.strip(), meaning.strip()) for name, default, meaning in rows}

    def test_docs_table_matches_the_spec(self):
        rows = self._docs_rows()
        assert list(rows) == [extra.name for extra in EXTRA_FIELDS]
        for extra in EXTRA_FIELDS:
            default, meaning = rows[extra.name]
            expected = f"{extra.default:g}" if isinstance(extra.default, float) else str(extra.default)
            assert default == expected, extra.name
            assert meaning.startswith(extra.description.rstrip(".")), extra.name

    def test_provider_info_form_is_the_spec(self):
        from airflow_provider_smspartner.get_provider_info import get_provider_info

        (conn_type,) = get_provider_info()["connection-types"]
        fields = conn_type["conn-fields"]
        assert list(fields) == [extra.name for extra in EXTRA_FIELDS]
        assert [field["label"] for field in fields.values()] == [extra.label for extra in EXTRA_FIELDS]
        placeholder = json.loads(conn_type["ui-field-behaviour"]["placeholders"]["extra"])
        assert placeholder == {extra.name: extra.default for extra in EXTRA_FIELDS}
