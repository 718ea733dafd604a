"""lepton_accel"""
