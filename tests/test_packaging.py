"""Our loaders must never shadow (or be shadowed by) Hugging Face's ``datasets`` package."""
import subprocess
import sys
import textwrap

import pytest

from dpl.project import PROJECT_ROOT


@pytest.mark.slow  # a fresh interpreter that imports torch
def test_stand_in_datasets_package_is_untouched(tmp_path):
    fake = tmp_path / "datasets"
    fake.mkdir()
    (fake / "__init__.py").write_text("IS_STAND_IN = True\n")
    code = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        sys.path.insert(1, {str(PROJECT_ROOT)!r})
        from dpl.project import import_project_modules
        from dpl.data.datasets import DATASET_REGISTRY
        import_project_modules()
        import datasets
        assert datasets.IS_STAND_IN, "the user's datasets package was replaced"
        assert "DescribableTextures" in DATASET_REGISTRY.registered_names()
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PROJECT_ROOT)
    assert out.returncode == 0, out.stderr
    assert "ok" in out.stdout


def test_repo_root_on_path_does_not_provide_a_datasets_package():
    # Running `python train.py` puts the repo root first on sys.path; without an __init__.py our
    # folder can at most be a namespace portion, which any installed regular package outranks.
    assert not (PROJECT_ROOT / "datasets" / "__init__.py").exists()
    assert not (PROJECT_ROOT / "trainers" / "__init__.py").exists()
