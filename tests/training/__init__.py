"""Tests of deft_clean/training."""
