"""The remote cache backends' registration module; it registers no backend yet."""
