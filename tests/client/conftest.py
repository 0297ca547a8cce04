"""A real `mifo serve --base-model tiny` per test module, and a scene with its masks as
files (tests/helpers/serve.py)."""

from tests.helpers.serve import scene, service  # noqa: F401 - fixtures of this folder
