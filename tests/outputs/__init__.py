"""Tests of deft_clean/outputs."""
