"""The AWS Batch backend: request building (pure) and the API client side."""
