"""Python SDK for the comfyui-grpc gateway."""
