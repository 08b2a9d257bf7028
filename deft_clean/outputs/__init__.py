"""What a run leaves and what reads it back: the Parquet contract, saved arrays, export, review decisions, the reports
and the notebook view. Imports only :mod:`deft_clean.inputs` and :mod:`deft_clean.run`.
"""
