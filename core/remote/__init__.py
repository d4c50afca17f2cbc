"""pybkd as a remote builder: what crosses the session between a client and the daemon."""
