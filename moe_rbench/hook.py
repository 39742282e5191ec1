"""Makes the stock `lm_eval --model moe_hf --tasks moe_rbench_*` work on lm-eval releases that do not
discover plugins (0.4.13 and earlier).

`moe_rbench.pth` (and `moe_rbench.start` from Python 3.15 on) calls `install()` at interpreter start.
It imports nothing heavy: it puts a finder in front of `sys.meta_path` that waits for lm-eval's own
modules and then, right after they have run,

- `lm_eval.models`: registers `moe_hf` and `moe_vllm` as lazy entries (the class is imported on first use). This must
  come after `lm_eval.models`, because `get_model()` only imports it while the registry is empty;
- `lm_eval.tasks.manager`: makes every `TaskManager` index our task folder.

Each part switches itself off when lm-eval discovers plugins natively (feature detection, never a
version check). `MOE_RBENCH_STARTUP_HOOK=0` switches both off; `moe_hf` then resolves to a stub whose
error points to `moe-rbench run`, which installs the hook explicitly (as it does under `python -S`).
Nothing here may raise into the interpreter's start-up or into lm-eval's imports: failures become a
warning that names the problem.
"""

import os
import sys

MODELS = {"moe_hf": "moe_rbench_models.moe_hf:MoEHFLM", "moe_vllm": "moe_rbench_models.moe_vllm:MoEVLLM"}
DISABLE_ENV = "MOE_RBENCH_STARTUP_HOOK"


def hook_enabled() -> bool:
    return os.environ.get(DISABLE_ENV, "1").strip().lower() not in {"0", "false", "off", "no"}


def _disabled_message(what: str) -> str:
    return (
        f"{what} installed but not registered with lm-eval: moe-rbench's start-up hook is switched off "
        f"({DISABLE_ENV}={os.environ.get(DISABLE_ENV)}). Run the same command as `moe-rbench run <lm_eval "
        f"arguments>`, which registers them explicitly, or unset {DISABLE_ENV}."
    )


class _HookDisabled:
    """What `moe_hf` resolves to while the start-up hook is switched off."""

    @classmethod
    def _fail(cls, *args, **kwargs):
        raise RuntimeError(_disabled_message(f"`--model {' / '.join(MODELS)}` is"))

    create_from_arg_string = create_from_arg_obj = _fail


def _point_to_moe_rbench_run(manager_module) -> None:
    """With the hook switched off, a `moe_rbench_*` task lm-eval cannot find says why, instead of only
    "Tasks not found"."""
    import functools

    task_manager_cls = manager_module.TaskManager
    original = task_manager_cls.match_tasks
    if getattr(original, "_moe_rbench", False):
        return

    @functools.wraps(original)
    def match_tasks(self, task_list):
        matches = original(self, task_list)
        ours = [name for name in task_list if isinstance(name, str) and name.startswith("moe_rbench")]
        if ours and not matches:
            raise ValueError(_disabled_message(f"The tasks {', '.join(ours)} are"))
        return matches

    match_tasks._moe_rbench = True
    task_manager_cls.match_tasks = match_tasks


def _register_model(models_module) -> None:
    from lm_eval.api import registry

    if hasattr(registry, "load_plugins"):  # lm-eval reads our `lm_eval.models` entry point itself
        return
    for name, target in MODELS.items():
        if name not in registry.model_registry:
            registry.model_registry.register(name, target=target)


def _register_disabled_stub(models_module) -> None:
    from lm_eval.api import registry

    for name in MODELS:
        if name not in registry.model_registry:
            registry.model_registry.register(name, target=_HookDisabled)


def _lm_eval_indexes_task_plugins(manager_module) -> bool:
    """True once lm-eval indexes installed task packages (our `lm_eval.tasks` entry point) itself."""
    names = [*vars(manager_module), *vars(manager_module.TaskManager)]
    return any("plugin" in name.lower() for name in names)


def _add_task_folder(manager_module) -> None:
    import functools
    import inspect

    from moe_rbench_tasks import with_our_tasks

    task_manager_cls = manager_module.TaskManager
    original_init = task_manager_cls.__init__
    if _lm_eval_indexes_task_plugins(manager_module) or getattr(original_init, "_moe_rbench", False):
        return
    signature = inspect.signature(original_init)

    @functools.wraps(original_init)
    def init_with_our_tasks(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        if bound.arguments.get("include_defaults", True):
            bound.arguments["include_path"] = with_our_tasks(bound.arguments.get("include_path"))
        original_init(*bound.args, **bound.kwargs)

    init_with_our_tasks._moe_rbench = True
    task_manager_cls.__init__ = init_with_our_tasks


class _AfterImportFinder:
    """Runs a callback right after a named module has executed, once."""

    def __init__(self) -> None:
        self.callbacks: dict[str, object] = {}

    def find_spec(self, fullname, path=None, target=None):
        callback = self.callbacks.pop(fullname, None)
        if callback is None:
            return None
        spec = None
        for finder in sys.meta_path:
            if finder is not self and hasattr(finder, "find_spec"):
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    break
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_callback(module):
            exec_module(module)
            _run_safely(callback, module)

        spec.loader.exec_module = exec_then_callback  # this loader instance serves this module only
        return spec

    def add(self, module_name: str, callback) -> None:
        module = sys.modules.get(module_name)
        if module is not None:  # already imported: act now
            _run_safely(callback, module)
        else:
            self.callbacks[module_name] = callback


def _run_safely(callback, module) -> None:
    try:
        callback(module)
    except Exception as error:  # noqa: BLE001 - an import of lm-eval must never break because of us
        import warnings

        warnings.warn(
            f"moe-rbench could not hook into {module.__name__} ({type(error).__name__}: {error}); "
            "`--model moe_hf` and the moe_rbench_* tasks may be missing. `moe-rbench run <lm_eval arguments>` "
            "registers them explicitly.",
            RuntimeWarning,
            stacklevel=2,
        )


_finder = _AfterImportFinder()


def install(force: bool = False) -> None:
    """Install the hook (idempotent). `force=True` ignores MOE_RBENCH_STARTUP_HOOK (used by `moe-rbench run`)."""
    if _finder not in sys.meta_path:
        sys.meta_path.insert(0, _finder)
    if force or hook_enabled():
        _finder.add("lm_eval.models", _register_model)
        _finder.add("lm_eval.tasks.manager", _add_task_folder)
    else:
        _finder.add("lm_eval.models", _register_disabled_stub)
        _finder.add("lm_eval.tasks.manager", _point_to_moe_rbench_run)


def startup() -> None:
    """Entry point of the `.pth`/`.start` files: never raises."""
    try:
        install()
    except Exception as error:  # noqa: BLE001 - a start-up file must not break the interpreter
        print(f"moe-rbench: start-up hook not installed ({type(error).__name__}: {error})", file=sys.stderr)
