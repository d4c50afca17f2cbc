from support.cachefixtures import moto_s3  # noqa: F401
