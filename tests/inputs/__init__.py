"""Tests of deft_clean/inputs."""
