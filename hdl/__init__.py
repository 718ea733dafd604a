"""Amaranth designs of the lepton_accel FPGA cores.

``regmap``, ``conv_regmap`` and ``regmap_common`` (register maps, stream formats, host
protocol) import without Amaranth; the
design modules (``pe``, ``systolic``, ``core``, ``axi``, ``matmul``) need the ``sim`` extra.
"""
