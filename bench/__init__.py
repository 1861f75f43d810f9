"""The comfyui-grpc benchmark suite: ``python -m bench`` (see README.md here)."""
