"""Generated gRPC/protobuf code for comfyui_grpc.v1. Do not edit."""
