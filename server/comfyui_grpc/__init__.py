"""comfyui-grpc: a gRPC gateway for ComfyUI.

The top-level package stays light: the generated stubs in ``comfyui_grpc.v1``
are shared with the client SDK, which must import without the server's
dependencies.
"""

__version__ = "0.1.0"
