"""Machine-code audit of the compiled CUDA kernels: no GPU needed.

The kernels are disassembled from the built `_core` (cuobjdump + nvdisasm, from the
`nvidia-cuda-cuobjdump` / `nvidia-cuda-nvdisasm` wheels or a CUDA toolkit on PATH), and
each kernel family must contain the instructions it exists for and none of the ones
that would put it on a slow path:

  - the Hopper kernels (GEMM and implicit-GEMM conv) issue HGMMA (wgmma) fed by TMA
    and set their register split with setmaxnreg on sm_90a; their sm_80 build is empty;
  - the sm_80 tensor-core kernels issue HMMA (IMMA for int8) fed by LDGSTS (cp.async);
  - the float32 SIMT kernel accumulates with FFMA and never touches the tensor cores
    (its contract is exact float32);
  - the conv2d gradient kernels accumulate in float32 FFMA on the CUDA cores (no tensor
    core), the SIMT ones from shared-memory tiles, the split-K grad-weight one adding its
    partial sums with a global reduction (RED / REDG on sm_90);
  - no kernel keeps data in local memory (LDL/STL: a spilled or run-time-indexed
    register array), which is what "no spills" in the ptxas report must mean.

This checks what was built, not what it computes: the GPU tests do that.
"""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest

from lepton_accel import build_info

from cuda_device import _core


def _tool_dirs() -> list[str]:
    """Directories holding cuobjdump / nvdisasm: PATH, then the NVIDIA wheels."""
    dirs = []
    spec = importlib.util.find_spec("nvidia")
    for root in (spec.submodule_search_locations or []) if spec else []:
        dirs += [str(p) for p in Path(root).glob("cu*/bin")]
    return dirs


def _find(tool: str) -> str | None:
    found = shutil.which(tool)
    if found:
        return found
    for d in _tool_dirs():
        if (Path(d) / tool).is_file():
            return str(Path(d) / tool)
    return None


CUOBJDUMP, NVDISASM = _find("cuobjdump"), _find("nvdisasm")

if _core is None or not build_info().get("cuda"):
    pytest.skip("this build has no CUDA kernels", allow_module_level=True)
if CUOBJDUMP is None or NVDISASM is None:
    pytest.skip("cuobjdump/nvdisasm not found (pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm)",
                allow_module_level=True)

_INSTR = re.compile(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)")


def disassemble(path: str) -> dict[tuple[str, str], set[str]]:
    """{(arch, mangled kernel name): set of opcodes (without modifiers)}."""
    env = dict(os.environ, PATH=os.pathsep.join([str(Path(NVDISASM).parent), os.environ.get("PATH", "")]))
    out = subprocess.run([CUOBJDUMP, "-sass", path], check=True, capture_output=True, text=True,
                         env=env).stdout
    kernels: dict[tuple[str, str], set[str]] = defaultdict(set)
    arch, name = None, None
    for line in out.splitlines():
        if "arch = " in line:
            arch = line.split("arch = ", 1)[1].strip()
        elif "Function : " in line:
            name = line.split("Function : ", 1)[1].strip()
            kernels[(arch, name)]
        elif name is not None:
            m = _INSTR.search(line)
            if m:
                kernels[(arch, name)].add(m.group(1))
    return kernels


def resource_usage(path: str) -> dict[tuple[str, str], dict[str, int]]:
    """{(arch, mangled kernel name): {"REG": n, "STACK": n, "LOCAL": n, ...}} from ptxas."""
    out = subprocess.run([CUOBJDUMP, "-res-usage", path], check=True, capture_output=True,
                         text=True).stdout
    usage, arch, name = {}, None, None
    for line in out.splitlines():
        if "arch = " in line:
            arch = line.split("arch = ", 1)[1].strip()
        elif line.strip().startswith("Function "):
            name = line.strip()[len("Function "):].rstrip(":")
        elif name is not None and "REG:" in line:
            usage[(arch, name)] = {k: int(v) for k, v in re.findall(r"(\w+(?:\[\d+\])?):(\d+)", line)}
            name = None
    return usage


@pytest.fixture(scope="module")
def sass():
    kernels = disassemble(_core.__file__)
    assert kernels, "cuobjdump found no kernels in the built core"
    return kernels


def select(sass, arch: str, pattern: str) -> dict[str, set[str]]:
    """Kernels of one architecture whose mangled name matches `pattern`."""
    return {name: ops for (a, name), ops in sass.items() if a == arch and re.search(pattern, name)}


# Itanium-mangled template arguments: 6__half, 13__nv_bfloat16, a = signed char, f = float.
F16_LIKE = r"I(?:6__half|13__nv_bfloat16)"
ARCHS = ["sm_80", "sm_90a"]

# (kernel family, mangled-name pattern, architectures, opcodes required, opcodes forbidden)
RULES = [
    ("wgmma GEMM", r"gemm_wgmma_kernel", ["sm_90a"], {"HGMMA", "UTMALDG", "SYNCS", "USETMAXREG"}, {"HMMA"}),
    # A by cp.async (LDGSTS) into the swizzled layout, B by TMA
    ("wgmma implicit-GEMM conv", r"conv2d_wgmma_kernel", ["sm_90a"],
     {"HGMMA", "UTMALDG", "LDGSTS", "SYNCS", "USETMAXREG"}, {"HMMA"}),
    ("mma.sync GEMM f16/bf16", r"gemm_mma_kernel" + F16_LIKE, ARCHS, {"HMMA", "LDGSTS", "LDSM"}, set()),
    ("mma.sync GEMM tf32", r"gemm_mma_kernelIf", ARCHS, {"HMMA", "LDGSTS"}, set()),
    # (8-bit operands stored M/N-major are read with LDS: ldmatrix cannot transpose bytes)
    ("mma.sync GEMM int8", r"gemm_mma_kernelIa", ARCHS, {"IMMA", "LDGSTS"}, {"HMMA"}),
    ("implicit-GEMM conv f16/bf16", r"conv2d_igemm_kernel" + F16_LIKE, ARCHS, {"HMMA", "LDGSTS"}, set()),
    ("implicit-GEMM conv int8", r"conv2d_igemm_kernelIa", ARCHS, {"IMMA", "LDGSTS"}, {"HMMA"}),
    ("SIMT float32 GEMM", r"gemm_simt_f32_kernel", ARCHS, {"FFMA"}, {"HMMA", "HGMMA"}),
    ("conv2d grad-input SIMT", r"conv2d_grad_simt_kernel.*GradInputOp", ARCHS, {"FFMA", "LDS", "STS", "BAR"},
     {"HMMA", "HGMMA", "RED", "REDG", "ATOM", "ATOMG"}),
    ("conv2d grad-input direct", r"grad_input_generic_kernel", ARCHS, {"FFMA"}, {"HMMA", "HGMMA"}),
    ("conv2d grad-weight direct", r"grad_weight_generic_kernel", ARCHS, {"FFMA", "SHFL"}, {"HMMA", "HGMMA"}),
]


def _grad_weight_simt(sass, arch):
    return select(sass, arch, r"conv2d_grad_simt_kernel.*GradWeightOp")


@pytest.mark.parametrize("arch", ARCHS)
def test_grad_weight_simt_reduces_in_global_memory(sass, arch):
    """Its K splits add into the float32 workspace: a fire-and-forget reduction (RED on
    sm_80, REDG on sm_90), never a returning atomic, and FFMA from shared tiles."""
    found = _grad_weight_simt(sass, arch)
    assert len(found) == 3, f"expected f32/f16/bf16 instantiations, got {sorted(found)}"
    for name, ops in found.items():
        assert {"FFMA", "LDS", "STS", "BAR"} <= ops, name
        assert ops & {"RED", "REDG"} and not ops & {"ATOM", "ATOMG", "HMMA", "HGMMA"}, (name, sorted(ops))


@pytest.mark.parametrize("family,pattern,archs,required,forbidden", RULES, ids=[r[0] for r in RULES])
def test_kernel_family_uses_its_instructions(sass, family, pattern, archs, required, forbidden):
    for arch in archs:
        found = select(sass, arch, pattern)
        assert found, f"no {family} kernel for {arch} in the build"
        for name, ops in found.items():
            assert required <= ops, f"{family} {name} ({arch}) lacks {sorted(required - ops)}"
            assert not (forbidden & ops), f"{family} {name} ({arch}) uses {sorted(forbidden & ops)}"


def test_no_kernel_uses_local_memory(sass):
    offenders = [f"{name} ({arch}): {sorted(ops & {'LDL', 'STL'})}"
                 for (arch, name), ops in sass.items() if ops & {"LDL", "STL"}]
    assert not offenders, "local-memory traffic (spills or indexed register arrays):\n" + "\n".join(offenders)


def test_hopper_kernels_are_empty_outside_sm90a(sass):
    """Without sm_90a features the wgmma kernels compile to nothing; the dispatcher must
    never pick them there, and they must not quietly hold a slower body either."""
    for name, ops in select(sass, "sm_80", r"wgmma").items():
        assert not ops & {"HGMMA", "HMMA", "FFMA", "LDG", "STG"}, f"{name} (sm_80) is not empty: {sorted(ops)}"


def test_no_kernel_has_a_stack_frame():
    usage = resource_usage(_core.__file__)
    assert usage, "cuobjdump reported no kernel resources"
    offenders = [f"{name} ({arch}): {u}" for (arch, name), u in usage.items()
                 if u.get("STACK", 0) or u.get("LOCAL", 0)]
    assert not offenders, "stack frame or local memory:\n" + "\n".join(offenders)


def test_warp_specialised_kernels_launch_with_the_register_budget_they_split():
    """setmaxnreg moves registers between warpgroups of a block launched with 168 per
    thread (384 threads, one block per SM); the split in the source (producer + two
    consumer warpgroups) assumes exactly that launch count."""
    usage = resource_usage(_core.__file__)
    hopper = {name: u for (arch, name), u in usage.items() if arch == "sm_90a" and "wgmma_kernel" in name}
    assert hopper, "no sm_90a wgmma kernels in the build"
    for name, u in hopper.items():
        assert u["REG"] == 168, f"{name}: launched with {u['REG']} registers per thread, not 168"
