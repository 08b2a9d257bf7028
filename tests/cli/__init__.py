"""Tests of deft_clean/cli."""
