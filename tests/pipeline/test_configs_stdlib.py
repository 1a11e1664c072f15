"""The API imports the pipeline's configs, so importing them must load nothing but the standard
library: proven in a fresh interpreter, whatever the import-linter contract lists."""

from __future__ import annotations

import json
import subprocess
import sys

_PROBE = """
import importlib, json, pkgutil, sys
before = set(sys.modules)
package = importlib.import_module(sys.argv[1])
names = [sys.argv[1]]
for info in pkgutil.walk_packages(getattr(package, "__path__", []), sys.argv[1] + "."):
    importlib.import_module(info.name)
    names.append(info.name)
print(json.dumps({"imported": names, "loaded": sorted(set(sys.modules) - before)}))
"""


def loaded_by(package: str) -> tuple[list[str], list[str]]:
    """(the modules of ``package``, every module importing them all loaded) in a fresh
    interpreter, whose environment (and so PYTHONPATH) is this one's."""
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, package], capture_output=True, text=True, check=True
    )
    found = json.loads(out.stdout)
    return found["imported"], found["loaded"]


def outside_stdlib(loaded: list[str], package: str) -> list[str]:
    """The loaded modules that are neither the standard library's nor ``package``'s own."""
    own = (package, f"{package}.")
    parents = {package.rsplit(".", i)[0] for i in range(1, package.count(".") + 1)}
    return [
        name
        for name in loaded
        if name.split(".")[0] not in sys.stdlib_module_names
        and not name.startswith(own)
        and name not in parents
    ]


def test_importing_every_config_module_loads_the_standard_library_alone() -> None:
    imported, loaded = loaded_by("pipeline.configs")
    assert {"pipeline.configs.finetune", "pipeline.configs.training"} <= set(imported)
    assert outside_stdlib(loaded, "pipeline.configs") == []


def test_the_check_sees_a_third_party_import() -> None:
    _, loaded = loaded_by("pipeline.parts.device")
    assert "torch" in outside_stdlib(loaded, "pipeline.parts.device")
