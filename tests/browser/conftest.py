from tests.api.stack import local_stack, stack_maker  # noqa: F401
