"""Amaranth designs of the lepton_accel FPGA cores.

``regmap`` (register map, stream formats, host protocol) imports without Amaranth; the
design modules (``pe``, ``systolic``, ``core``, ``axi``, ``matmul``) need the ``sim`` extra.
"""
