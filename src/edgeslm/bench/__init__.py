"""``python -m edgeslm.bench``: measure speed, memory, schema compliance and cost on this machine.

Every speed figure is reported next to a baseline measured in the same run (these machines are
shared and noisy), as a ratio.
"""
