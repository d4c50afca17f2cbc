"""Every hookspec is documented in docs/plugin_hooks.md and has a test named test_hook_<name>."""

import inspect
import re
from pathlib import Path

from pybk.core import hookspecs
from pybk.core.plugins import PybkPluginManager

REPO = Path(__file__).resolve().parents[2]


def _hook_names():
    return sorted(n for n in PybkPluginManager().hook.__dict__ if n.startswith("pybk_"))


def test_every_hook_is_documented_with_its_signature():
    doc = (REPO / "docs" / "plugin_hooks.md").read_text()
    headings = re.findall(r"^## (pybk_\w+)\(([^)]*)\)$", doc, flags=re.M)
    documented = {name: args for name, args in headings}
    for name in _hook_names():
        assert name in documented, f"{name} missing from docs/plugin_hooks.md"
        spec_args = ", ".join(inspect.signature(getattr(hookspecs, name)).parameters)
        assert documented[name] == spec_args, f"{name}: doc says ({documented[name]})"
    assert set(documented) == set(_hook_names()), "docs mention hooks that do not exist"


def test_every_hook_has_a_test():
    sources = "\n".join(p.read_text() for p in (REPO / "tests").rglob("test_*.py"))
    missing = [n for n in _hook_names() if f"def test_hook_{n}" not in sources]
    assert not missing, f"hooks without a test_hook_<name>: {missing}"


def test_hookspecs_follow_naming_and_docstring_rules():
    for name in _hook_names():
        spec = getattr(hookspecs, name)
        doc = inspect.getdoc(spec)
        assert doc and ":returns:" in doc and "versionadded" in doc, name
        opts = spec.pybk_spec
        if opts.get("firstresult"):
            assert "Stops at first non-None result" in doc, name
