"""Amaranth designs of the lepton_accel FPGA cores.

Per core: ``<core>_regmap`` (registers, stream formats, host protocol, cycle model),
``<core>_core`` (the core on amaranth streams) and ``<core>_top`` (its AXI top level and
``generate_verilog``), for ``matmul`` and ``conv``. Shared: ``regmap_common`` (register-map
records and common registers), ``pe`` and ``systolic`` (the array), ``drain`` (bias and
output side), ``axi`` (AXI4 signatures, AXI4-Lite target, top-level glue), ``cli``.

The register maps import without Amaranth; the designs need the ``sim`` extra. Nothing
here imports the rest of lepton_accel.
"""
