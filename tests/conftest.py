"""Shared fixtures live in tests/fixtures/, one module per real dependency they start."""

pytest_plugins = [
    "tests.fixtures.audio",
    "tests.fixtures.vllm",
    "tests.fixtures.s3",
    "tests.fixtures.services",
]
