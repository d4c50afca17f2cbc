"""pybk: a container image build engine in Python, BuildKit's model with a plugin core."""
