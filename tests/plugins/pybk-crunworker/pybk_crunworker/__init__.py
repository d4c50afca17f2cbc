"""pybk-crunworker: an example third-party pybk worker (build steps run in crun)."""
