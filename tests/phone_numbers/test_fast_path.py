"""Guards of the phone_numbers._fast_path package's use of private names of ``phonenumbers``.

The fast path imports a few private helpers of ``phonenumbers.phonenumberutil``; each import
falls back silently to ``phonenumbers.parse`` (exact, but slower) when a release renames it.
These tests make that loud, and keep ``PRIVATE_HELPERS`` in step with the code.
"""

from __future__ import annotations

import ast
from pathlib import Path

import phonenumbers
from phonenumbers import phonenumberutil

from airflow_provider_smspartner import phone_numbers
from airflow_provider_smspartner.phone_numbers import _fast_path
from airflow_provider_smspartner.phone_numbers._fast_path import national, rescue

PACKAGE = Path(phone_numbers.__file__).parent


def _private_names_used() -> dict[str, list[str]]:
    """Private names the package takes from ``phonenumbers``, with where: imported from one of its
    modules (``from phonenumbers.x import _name``) or read as an attribute of something imported
    from it (``phonenumberutil._name``, ``phonenumbers._name``)."""
    found: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        roots: set[str] = set()  # local names bound to phonenumbers modules or objects
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == "phonenumbers":
                        roots.add(alias.asname or alias.name.split(".")[0])
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "phonenumbers":
                for alias in node.names:
                    if alias.name.startswith("_"):
                        found.setdefault(alias.name, []).append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
                    else:
                        roots.add(alias.asname or alias.name)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                base = node.value
                while isinstance(base, ast.Attribute):
                    base = base.value
                if isinstance(base, ast.Name) and base.id in roots:
                    found.setdefault(node.attr, []).append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    return found


def test_private_helpers_exist_in_this_phonenumbers_release():
    missing = [name for name in _fast_path.PRIVATE_HELPERS if not hasattr(phonenumberutil, name)]
    assert not missing, (
        f"phonenumbers {phonenumbers.__version__} no longer has {missing} in phonenumberutil: the "
        "phone fast path silently sends the texts that need them to phonenumbers.parse (exact, "
        "but slower). Find what replaced them in phonenumbers/phonenumberutil.py, adapt "
        "airflow_provider_smspartner/phone_numbers/_fast_path/ and PRIVATE_HELPERS, run "
        "tests/phone_numbers and benchmarks/bench_phone_numbers.py; until then, pin phonenumbers "
        "below this release in pyproject.toml."
    )


def test_the_fast_path_actually_uses_them():
    # The imports fall back silently: check that none did.
    assert national._STRIP_NATIONAL_PREFIX is not None, (
        "_maybe_strip_national_prefix_carrier_code was not imported: see the test above"
    )
    assert rescue._RESCUE, "the rescue's private patterns were not imported: see the test above"


def test_private_helpers_lists_every_private_name_used():
    used = _private_names_used()
    assert set(used) == set(_fast_path.PRIVATE_HELPERS), (
        f"phone_numbers/ uses these private names of phonenumbers: {used}; "
        f"PRIVATE_HELPERS lists {list(_fast_path.PRIVATE_HELPERS)}. Keep them equal (a new private "
        "helper must buy at least 5 % of benchmarks/bench_phone_numbers.py's time; see "
        "benchmarks/README.md), so that the test above guards every one of them."
    )
