"""The start-up hook that registers `moe_hf` and our tasks with lm-eval releases lacking plugin discovery."""

from __future__ import annotations

import json
import pkgutil
import site
import sys
import types
import warnings
from pathlib import Path

import pytest
from helpers import run

from moe_rbench import hook
from moe_rbench_tasks import TASKS_DIR, with_our_tasks

HEAVY = ("lm_eval", "torch", "transformers", "datasets", "numpy", "yaml", "accelerate")


def test_start_up_files_are_installed_and_point_to_the_hook():
    site_packages = next(Path(p) for p in site.getsitepackages() if (Path(p) / "moe_rbench.pth").exists())
    pth_line = (site_packages / "moe_rbench.pth").read_text().strip()
    assert pth_line.startswith("import moe_rbench.hook") and "startup()" in pth_line
    entry_point = (site_packages / "moe_rbench.start").read_text().strip()
    assert pkgutil.resolve_name(entry_point) is hook.startup


def test_hook_runs_at_start_up_and_imports_nothing_heavy():
    probe = "import sys, json; print(json.dumps([sorted(sys.modules), [type(f).__name__ for f in sys.meta_path]]))"
    modules, finders = json.loads(run([sys.executable, "-c", probe]).stdout)
    assert "moe_rbench.hook" in modules and finders[0] == "_AfterImportFinder"
    assert not [name for name in modules if name.split(".")[0] in HEAVY]


def test_model_registration_switches_off_when_lm_eval_loads_plugins_itself():
    probe = (
        "import lm_eval.api.registry as r; {patch}import lm_eval.models; "
        "print('moe_hf' in r.model_registry, r.get_model('hf').__name__)"
    )
    assert run([sys.executable, "-c", probe.format(patch="")]).stdout.split() == ["True", "HFLM"]
    native = probe.format(patch="r.load_plugins = lambda *args: None; ")
    assert run([sys.executable, "-c", native]).stdout.split() == ["False", "HFLM"]


def test_task_folder_patch_switches_off_when_lm_eval_indexes_task_plugins():
    class TaskManager:
        def __init__(self, verbosity=None, include_path=None, include_defaults=True, metadata=None):
            self.include_path = include_path

    native = types.ModuleType("manager_with_plugins")
    native.TaskManager, native.load_plugin_tasks = TaskManager, lambda: None
    hook._add_task_folder(native)
    assert native.TaskManager(include_path="x").include_path == "x"

    released = types.ModuleType("manager_0_4_13")
    released.TaskManager = type("TaskManager", (TaskManager,), {})
    hook._add_task_folder(released)
    assert released.TaskManager(None, "x").include_path == ["x", TASKS_DIR]
    assert released.TaskManager(include_path="x", include_defaults=False).include_path == "x"


def test_our_task_folder_is_added_once():
    assert with_our_tasks(None) == [TASKS_DIR]
    assert with_our_tasks(["a", str(TASKS_DIR)]) == ["a", str(TASKS_DIR)]
    assert with_our_tasks("a") == ["a", TASKS_DIR]


def test_a_failing_hook_warns_and_never_breaks_the_import(tmp_path, monkeypatch):
    (tmp_path / "module_under_hook.py").write_text("VALUE = 42\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    seen = []

    def failing(module):
        seen.append(module.VALUE)
        raise KeyError("registry changed")

    hook._finder.add("module_under_hook", failing)
    with pytest.warns(RuntimeWarning, match=r"could not hook into module_under_hook \(KeyError"):
        import module_under_hook
    assert module_under_hook.VALUE == 42 and seen == [42]  # the callback ran after the module's code
    monkeypatch.delitem(sys.modules, "module_under_hook")


def test_start_up_entry_point_never_raises(monkeypatch, capsys):
    def broken_install(force=False):
        raise OSError("read-only meta path")

    monkeypatch.setattr(hook, "install", broken_install)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hook.startup()
    assert "start-up hook not installed (OSError: read-only meta path)" in capsys.readouterr().err
