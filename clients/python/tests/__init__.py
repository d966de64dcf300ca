"""Tests of the memring Python client against real local clusters."""
