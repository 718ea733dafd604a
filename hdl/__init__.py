"""Amaranth designs of the lepton_accel FPGA cores."""
