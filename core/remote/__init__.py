"""pybkd as a remote builder: the control API over gRPC and the sessions behind it."""
