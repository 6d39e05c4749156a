"""The catalog's gRPC server: servicer, interceptors (auth, audit, errors) and serving."""
