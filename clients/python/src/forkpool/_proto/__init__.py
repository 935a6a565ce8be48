"""Code generated from proto/forkpool/v1/forkpool.proto by clients/python/generate.py. Do not edit."""
