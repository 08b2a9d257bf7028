"""Tests of deft_clean/run."""
