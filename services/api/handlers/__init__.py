"""gRPC servicers, one module per service of protos/darb/v1."""
