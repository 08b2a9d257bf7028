"""Machinery both phases share: the training engine, run state and checkpoints, torchrun ranks, progress, file writes,
path safety, configuration, errors and backbone loading. Imports nothing else of the package.
"""
