"""The YAML pipeline frontend (``yaml.v0``): multi-stage pipelines as data, same LLB as the
equivalent Dockerfile."""
