"""pybk-hello: the example third-party pybk plugin."""
