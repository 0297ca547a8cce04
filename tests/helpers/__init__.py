"""Shared test fixtures: synthetic images and masks built in code."""
