"""Every way a dataset comes in: the listing and its readers, image decoding, frames, the cache and the torch Dataset.
Imports only :mod:`deft_clean.run`.
"""
