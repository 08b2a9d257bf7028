"""Phase 2: fine-tune a classifier on the rows phase 1 kept, linear probes, saved classifiers and prediction. Imports
the layers below (detecting, outputs, inputs, run).
"""
