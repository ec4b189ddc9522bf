"""The edge: what faces clients (the gRPC servicer, interceptors and the Envoy REST gateway)."""
