"""`pip install <checkout>` into a fresh virtual environment, then the stock lm-eval commands, offline.

The fresh environment reuses this one's dependencies (a path line to its site-packages: `.pth` files
found through such a line are not executed, so this checkout's editable hook stays out), and gets
moe-rbench only from the wheel built here.
"""

from __future__ import annotations

import json
import site
import sys
import zipfile
from pathlib import Path

import pytest
from helpers import FIXTURE_DATA, STYLE_OOD_TASKS, run

CHECKOUT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--quiet",
            "-w",
            str(out),
            str(CHECKOUT),
        ]
    )
    (built,) = out.glob("moe_rbench-*.whl")
    return built


@pytest.fixture(scope="module")
def fresh_env(wheel, tmp_path_factory) -> Path:
    env = tmp_path_factory.mktemp("fresh") / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(env)])
    (env_site,) = env.glob("lib/python*/site-packages")
    (env_site / "_dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(env / "bin" / "python"),
            "install",
            "--no-deps",
            "--no-index",
            "--quiet",
            str(wheel),
        ]
    )
    return env


def test_wheel_ships_tasks_start_up_files_and_entry_points(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert {
        "moe_rbench.pth",
        "moe_rbench.start",
        "moe_rbench_tasks/style_ood/moe_rbench_ood.yaml",
        "moe_rbench_tasks/style_ood/_template_yaml",
        "moe_rbench_tasks/groups/moe_rbench.yaml",
        "moe_rbench_tasks/judges/refusal_model.json",  # the refusal judge cannot run without it
    } <= set(names)
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "[lm_eval.models]\nmoe_hf = moe_rbench_models.moe_hf:MoEHFLM" in entry_points
    assert "[lm_eval.tasks]\nmoe_rbench = moe_rbench_tasks" in entry_points
    assert "moe-rbench = moe_rbench.cli:main" in entry_points


def test_stock_lm_eval_command_after_pip_install(fresh_env, tiny_model, tmp_path):
    python = str(fresh_env / "bin" / "python")
    located = run([python, "-c", "import moe_rbench_tasks as t; print(t.__file__); print(t.TASKS_DIR)"], cwd=tmp_path)
    package_file, tasks_dir = located.stdout.split()
    assert package_file.startswith(str(fresh_env)) and tasks_dir.startswith(str(fresh_env))

    run(
        [
            python,
            "-m",
            "lm_eval",
            "--model",
            "moe_hf",
            "--model_args",
            f"pretrained={tiny_model('qwen2_moe')}",
            "--tasks",
            "moe_rbench_ood",
            "--limit",
            "20",
            "--device",
            "cpu",
            "--batch_size",
            "8",
            "--output_path",
            str(tmp_path / "out"),
        ],
        env={"MOE_RBENCH_DATA_DIR": str(FIXTURE_DATA)},
        cwd=tmp_path,
    )
    (results_file,) = (tmp_path / "out").rglob("results_*.json")
    results = json.loads(results_file.read_text())
    assert set(results["group_subtasks"]["moe_rbench_ood_styles"]) == set(STYLE_OOD_TASKS[1:])
    assert "acc,none" in results["groups"]["moe_rbench_ood_styles"]
    assert all(results["n-samples"][task]["effective"] == 20 for task in STYLE_OOD_TASKS)


def test_ls_and_validate_after_pip_install(fresh_env, tmp_path):
    python = str(fresh_env / "bin" / "python")
    listing = run([python, "-m", "lm_eval", "ls", "tasks"], cwd=tmp_path).stdout
    listed = {line.split("|")[1].strip() for line in listing.splitlines() if line.startswith("|")}
    assert {"moe_rbench_ood", *STYLE_OOD_TASKS, "hellaswag", "anli_r1"} <= listed
    validated = run([python, "-m", "lm_eval", "validate", "--tasks", "moe_rbench_ood,hellaswag"], cwd=tmp_path)
    assert "All tasks found and valid" in validated.stdout
