"""The repository a newcomer clones: README and CI in step, one version, a CLI install without Qt, one config folder."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

import napari_localize

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
CI = (ROOT / ".ci" / "run").read_text()


def _quick_start_commands() -> list[str]:
    section = README[README.index("## Quick start"):README.index("## napari")]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", section, re.S)]


def _apt_packages(text: str) -> set[str]:
    match = re.search(r"apt-get install -y ([^\n]+)", text)
    assert match, "no apt-get install line"
    return set(match.group(1).split())


def test_readme_quick_start_commands_are_run_verbatim_by_ci():
    apt, first, tests = _quick_start_commands()
    assert "napari-localize localize" in first and "demo-output/" in first
    assert tests == 'python3 -m pip install -e ".[testing]" && python3 -m pytest'
    ci_lines = [line.strip() for line in CI.splitlines()]
    assert first in ci_lines and tests in ci_lines
    # the README states every system package CI installs (CI adds python3-venv only where venv lacks ensurepip)
    ci_packages = set(re.search(r'APT_PACKAGES="([^"]+)"', CI).group(1).split())
    assert _apt_packages(apt) == ci_packages | {"python3-venv"}
    assert {"xvfb", "libxcb-icccm4", "libxcb-keysyms1", "libxcb-cursor0", "libxkbcommon-x11-0"} <= ci_packages
    assert "ruff check ." in CI and "npe2 validate napari-localize" in CI


def test_demo_output_folder_is_ignored_by_git():
    out = subprocess.run(["git", "check-ignore", "-q", "demo-output/demo.ome.tif"], cwd=ROOT)
    if out.returncode == 128:
        pytest.skip("not a git checkout")
    assert out.returncode == 0


def test_version_is_kept_in_one_place():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["hatch"]["version"]["path"] == "napari_localize/__init__.py"
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", napari_localize.__version__)


def test_every_imported_distribution_is_declared():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {re.split(r"[<>=\[ ;]", d)[0].lower() for d in project["dependencies"]}
    napari_extra = {re.split(r"[<>=\[ ;]", d)[0].lower() for d in project["optional-dependencies"]["napari"]}
    imported = set()
    for path in (ROOT / "napari_localize").rglob("*.py"):
        for line in path.read_text().splitlines():
            m = re.match(r"\s*(?:from|import) ([a-zA-Z_][\w]*)", line)
            if m:
                imported.add(m.group(1))
    stdlib = set(sys.stdlib_module_names) | {"napari_localize", "the"}
    to_dist = {"yaml": "pyyaml", "numba": "numba"}
    # numba_cuda is an optional extra ([gpu]), imported only when a GPU engine is asked for; the .czi/.lif
    # readers' packages are the extras [zeiss] and [leica], imported only when such a file is opened
    readers = {re.split(r"[<>=\[ ;]", d)[0].lower() for extra in ("zeiss", "leica")
               for d in project["optional-dependencies"][extra]}
    third_party = {to_dist.get(m, m).lower() for m in imported - stdlib} - {"numba_cuda"}
    assert third_party <= declared | napari_extra | readers, third_party - declared - napari_extra - readers
    assert {"psygnal", "platformdirs", "tqdm"} <= declared | napari_extra
    # the CLI install needs no viewer
    assert not {"napari", "pyqt6", "pyqt5", "qtpy", "magicgui"} & declared


def test_cli_imports_no_napari_or_qt(tmp_path):
    """The main job (simulate + localize) runs without importing napari, Qt or magicgui (the CLI install)."""
    code = (
        "import sys\n"
        "from napari_localize.cli import main\n"
        f"movie = {os.fspath(tmp_path / 'demo.ome.tif')!r}\n"
        "assert main(['simulate', movie, '--frames', '20', '--height', '32', '--width', '32']) == 0\n"
        "assert main(['localize', movie, '--baseline', '100', '--min-net-gradient', '1200']) == 0\n"
        "gui = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'napari', 'qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'magicgui', 'vispy', 'psygnal'})\n"
        "assert not gui, gui\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "demo.ome_locs.hdf5").exists()


def test_parameters_and_camera_configs_share_one_platformdirs_folder(monkeypatch, tmp_path):
    import platformdirs

    from napari_localize._napari._state import config_dir, save_parameters
    from napari_localize.core.parameters import LocalizeParameters
    from napari_localize.io.camera_config import user_config_dir

    monkeypatch.delenv("NAPARI_LOCALIZE_CONFIG_DIR")
    monkeypatch.setenv("XDG_CONFIG_HOME", os.fspath(tmp_path / "xdg"))
    expected = Path(platformdirs.user_config_dir("napari-localize", appauthor=False, roaming=True))
    assert user_config_dir() == expected and Path(config_dir()) == expected
    saved = save_parameters(LocalizeParameters())
    assert Path(saved).parent == user_config_dir()


def test_tests_never_read_the_shared_folder():
    for path in (ROOT / "tests").glob("*.py"):
        if path.name == "test_packaging.py":
            continue
        assert "sha" + "red/sample_data" not in path.read_text() and '"' + 'shared' + '"' not in path.read_text(), path.name
    assert (ROOT / "tests" / "data" / "LICENSES.md").exists()


def test_tracked_files_are_small():
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True)
    if out.returncode != 0:
        pytest.skip("not a git checkout")
    sizes = {name: (ROOT / name).stat().st_size for name in out.stdout.decode().split("\0")
             if name and (ROOT / name).is_file()}
    assert max(sizes.values()) < 2 << 20, max(sizes, key=sizes.get)
    assert sum(sizes.values()) < 16 << 20
