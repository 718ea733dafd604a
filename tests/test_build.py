"""The package builds and works without CUDA, and refuses CUDA=ON without a compiler."""
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pybind11 = pytest.importorskip("pybind11")


@pytest.fixture(scope="module")
def cpu_only_wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    env = dict(os.environ, LEPTON_ACCEL_CUDA="OFF")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
         "-w", str(out), f"--config-settings=build-dir={out / 'build'}"],
        check=True, env=env, capture_output=True, text=True)
    wheel = next(out.glob("lepton_accel-*.whl"))
    target = out / "site"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(target)
    return target


def test_cpu_only_build_imports_and_runs(cpu_only_wheel):
    # -S keeps the developer's editable install (a .pth hook) out of the way;
    # site-packages follows the freshly built wheel on the path for NumPy and friends.
    path = os.pathsep.join([str(cpu_only_wheel), sysconfig.get_paths()["purelib"],
                            sysconfig.get_paths()["platlib"]])
    code = (
        "import numpy as np, lepton_accel as la\n"
        "assert la.__file__.startswith(%r), la.__file__\n"
        "info = la.build_info(); assert info['native_core'] and info['cuda'] is False, info\n"
        "b = {x['name']: x for x in la.backends()}\n"
        "assert not b['cuda']['available'] and 'no CUDA kernels' in b['cuda']['reason'], b\n"
        "a = np.arange(6, dtype=np.float32).reshape(2, 3)\n"
        "assert (la.matmul(a, a.T) == a @ a.T).all()\n"
        "print('ok')\n" % str(cpu_only_wheel))
    res = subprocess.run([sys.executable, "-S", "-c", code], env=dict(os.environ, PYTHONPATH=path),
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"


def test_cuda_on_without_compiler_fails_clearly(tmp_path):
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.skip("cmake not on PATH")
    env = dict(os.environ, CUDACXX=str(tmp_path / "no-nvcc"))
    res = subprocess.run([cmake, "-S", str(ROOT), "-B", str(tmp_path / "b"), "-DLEPTON_ACCEL_CUDA=ON",
                          f"-Dpybind11_DIR={pybind11.get_cmake_dir()}"],
                         env=env, capture_output=True, text=True)
    assert res.returncode != 0
    assert "LEPTON_ACCEL_CUDA=ON but no CUDA compiler was found" in res.stderr + res.stdout
