"""Tests of deft_clean/detecting."""
