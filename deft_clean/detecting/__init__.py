"""Phase 1: DeFT dual prompts and visual prompt tokens on a frozen CLIP, the evidence, selection of clean and flagged
rows, the evidence check and dataset health. Imports the layers below (outputs, inputs, run).
"""
