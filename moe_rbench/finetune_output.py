"""Where `moe-rbench finetune` writes its checkpoint: checked before anything is loaded, written atomically.

- OUT must be a new or an empty directory; one that holds files is refused unless `overwrite=True`, and then it is
  replaced as a whole (every file in it) by the new checkpoint, once that is completely written;
- OUT is never the input checkpoint, nor a directory that holds it, even with `overwrite=True` (paths are compared
  resolved: relative paths and symbolic links name the folder they lead to);
- the checkpoint is saved into a staging directory beside OUT (`.<OUT name>.partial-<pid>-<hex>`, in the same
  parent, so on the same filesystem) and renamed onto OUT once complete. A run that fails (a full disk, an error,
  Ctrl-C) removes the staging directory and leaves OUT as it was; a killed process (SIGKILL) leaves its staging
  directory, whose hidden name is never mistaken for OUT.

Under several processes (`accelerate launch`) only the process that saves (Trainer's `should_save`) publishes.
"""

from __future__ import annotations

import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

from moe_rbench_models.errors import MoERBenchError, OptionError


class CheckpointWriteError(MoERBenchError, RuntimeError):
    """The fine-tuned checkpoint could not be written; the message says what was kept and the fix."""


@dataclass
class Destination:
    out: Path  # resolved
    staging: Path  # beside `out`: where the checkpoint is saved before it is renamed onto `out`
    replace: bool  # `out` holds files that the checkpoint replaces (overwrite=True)
    kept: bool = False  # the staging directory holds a finished checkpoint that could not be moved: keep it


def _listing(names: list[str]) -> str:
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def destination(model: str | Path, out_dir: str | Path, overwrite: bool) -> Destination:
    """OUT checked (see the module docstring) and its parent proven writable, before anything is loaded."""
    out = Path(out_dir).expanduser().resolve()
    source = Path(model).expanduser()
    if source.exists() and (out == source.resolve() or source.resolve().is_relative_to(out)):
        what = "is the input checkpoint" if out == source.resolve() else f"holds the input checkpoint {model}"
        raise OptionError(
            f"OUT {out_dir} {what}: fine-tuning would replace it. Write the fine-tuned checkpoint to another "
            "directory (--overwrite never replaces the input)"
        )
    if out.exists() and not out.is_dir():
        raise OptionError(f"OUT {out_dir} is a file; give a directory for the fine-tuned checkpoint")
    try:
        held = sorted(path.name for path in out.iterdir()) if out.is_dir() else []
    except OSError as error:
        raise OptionError(f"OUT {out_dir} cannot be read ({error.strerror}); choose another directory") from None
    if held and not overwrite:
        raise OptionError(
            f"OUT {out_dir} is not empty (it holds {_listing(held)}); give a new or empty directory, or pass "
            "--overwrite to replace it and everything in it once the new checkpoint is written"
        )
    staging = out.parent / f".{out.name}.partial-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging.mkdir()  # proves the parent writable before anything is loaded or trained
        staging.rmdir()
    except (FileExistsError, NotADirectoryError):
        raise OptionError(
            f"OUT {out_dir}: a part of its parent path is a file; give a directory path for the checkpoint"
        ) from None
    except OSError as error:
        raise OptionError(
            f"OUT {out_dir}: cannot write in {out.parent} ({error.strerror}); choose a directory you can write to"
        ) from None
    return Destination(out, staging, replace=bool(held))


def publish(target: Destination) -> None:
    """Rename the staging directory onto OUT (replacing OUT and its files when `target.replace`)."""
    if not target.replace:
        try:
            os.replace(target.staging, target.out)  # OUT absent, or an empty directory
        except OSError as error:
            target.kept = True
            raise CheckpointWriteError(
                f"The fine-tuned checkpoint could not be moved to {target.out} ({error.strerror}: did something "
                f"write there while training?); it is kept in {target.staging}: move it yourself"
            ) from None
        return
    old = target.out.with_name(f".{target.out.name}.replaced-{os.getpid()}-{secrets.token_hex(4)}")
    os.rename(target.out, old)
    try:
        os.rename(target.staging, target.out)
    except OSError as error:
        os.rename(old, target.out)
        target.kept = True
        raise CheckpointWriteError(
            f"The fine-tuned checkpoint could not replace {target.out} ({error.strerror}), which is as it was; the "
            f"checkpoint is kept in {target.staging}: move it yourself"
        ) from None
    shutil.rmtree(old)


def discard(target: Destination) -> None:
    """Remove the staging directory of a run that failed (or of a process that does not save)."""
    if not target.kept and target.staging.exists():
        shutil.rmtree(target.staging)


def write_failure(target: Destination, error: Exception) -> CheckpointWriteError:
    """The error for a checkpoint that could not be saved (a full disk, no permission)."""
    reason = getattr(error, "strerror", None) or str(error)
    kept = "its earlier files are untouched" if target.replace else "nothing was written there"
    return CheckpointWriteError(
        f"Could not write the fine-tuned checkpoint for {target.out} ({reason}); {kept}. Free space (or fix "
        "permissions) and run again"
    )
