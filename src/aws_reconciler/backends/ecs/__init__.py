"""The ECS backend: request building (pure) and the API client side."""
