"""Tests of the shared contracts."""
