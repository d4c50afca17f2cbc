"""pybk-toyfrontend: an example third-party frontend plugin (``# syntax=toy``)."""
