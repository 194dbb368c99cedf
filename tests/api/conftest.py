from tests.api.stack import local_stack, moto_endpoint, s3_stack, stack_maker  # noqa: F401
