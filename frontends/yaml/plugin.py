"""The YAML pipeline frontend's registration module (``yaml.v0``); it registers no class yet."""
