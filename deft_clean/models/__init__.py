"""The networks: open_clip loading and internals (:mod:`.clip`), DeFT's prompted CLIP with its loss and clean
rule (:mod:`.deft`), and phase 2's backbone + linear head (:mod:`.classifier`). No training loops here.
"""
