"""The gRPC edge: request validation, conversions, status mapping, servicer."""
