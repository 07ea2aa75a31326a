"""The installed environment is consistent and the console script is there."""

import shutil
import subprocess
import sys
from pathlib import Path


def test_pip_check_is_clean():
    result = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_pins_that_matter_are_installed():
    from importlib.metadata import version

    assert version("torch").startswith("2.13.0")
    assert version("hydra-core") == "1.4.0rc3"
    assert version("lighteval") == "0.13.0"
    assert version("mlflow") == "3.17.2"
    assert version("prefect").startswith("3.8.")
    assert int(version("xxhash").split(".")[0]) < 4


def test_smollm_console_script_is_installed():
    script = Path(sys.executable).parent / "smollm"
    assert script.exists() or shutil.which("smollm")


def test_library_never_imports_prefect():
    root = Path(__file__).resolve().parents[1] / "smollm"
    offenders = [p for p in root.rglob("*.py") if "import prefect" in p.read_text() or "from prefect" in p.read_text()]
    assert offenders == []
