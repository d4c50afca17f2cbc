"""The ``yaml.v0`` frontend: a pipeline file in, the Dockerfile converter's LLB and image
config out. Frontend options, named contexts and ``.dockerignore`` work as for Dockerfiles."""

from __future__ import annotations

from typing import Any

from pybk.core.interfaces import Frontend, FrontendBridge, FrontendRequest, FrontendResult


def targets_text(loaded) -> str:
    """``--call targets``: the stages, the default one marked."""
    from pybk.frontends.yaml.convert import default_target

    default = default_target(loaded)
    names = [n + (" (default)" if n == default else "") for n in loaded.pipeline.stages]
    return "TARGET\n" + "".join(f"{n}\n" for n in names)


def outline_text(loaded, target: str | None, build_args: dict[str, str]) -> str:
    """``--call outline``: the target and the build args it may use, with their values."""
    from pybk.frontends.yaml.convert import default_target

    stage_name = default_target(loaded, target)
    pipeline = loaded.pipeline
    wanted = list(pipeline.args.items())
    order = loaded.order[:loaded.order.index(stage_name) + 1]
    for name in order:
        stage = pipeline.stages[name]
        wanted += list(stage.args.items())
        wanted += [kv for step in stage.steps if step.arg for kv in step.arg.items()]
    rows: dict[str, str] = {}
    for key, default in wanted:
        rows.setdefault(key, build_args.get(key, default or ""))
    lines = [f"TARGET:      {stage_name}", ""]
    if rows:
        width = max(len("BUILD ARG"), *map(len, rows)) + 2
        lines.append(f"{'BUILD ARG':<{width}}VALUE")
        lines += [f"{k:<{width}}{v}".rstrip() for k, v in rows.items()]
    return "\n".join(lines) + "\n"


class YamlFrontend(Frontend):
    """YAML pipelines (``yaml.v0``): stages and steps as data, converted like a Dockerfile."""

    name = "yaml.v0"

    def solve(self, request: FrontendRequest, bridge: FrontendBridge) -> FrontendResult:
        from pybk.frontends.dockerfile import frontend as df
        from pybk.frontends.dockerfile.convert import convert_dockerfile
        from pybk.frontends.yaml import convert
        from pybk.frontends.yaml.pipeline import load_pipeline

        opts = request.opts
        filename = opts.get("filename", "pipeline.yaml")
        data = bridge.read_file("dockerfile", filename)
        args = df.build_args(opts)
        requestid = opts.get("requestid", "")
        targets = df.platforms(opts)
        first = targets[0] if targets else None
        contexts = {} if requestid else df.named_contexts(opts, bridge, first)
        known = set(contexts) | {k[len("context:"):].split("::", 1)[0]
                                 for k in opts if k.startswith("context:")}
        loaded = load_pipeline(data, filename, contexts=known)
        target = opts.get("target") or None
        if requestid == "frontend.lint":
            # loading checked the whole pipeline; a problem would have raised a located error
            return df.text_result("Check complete, no warnings found.\n")
        if requestid in df.SUBREQUESTS:
            return df.text_result(outline_text(loaded, target, args)
                                  if requestid == "frontend.outline" else targets_text(loaded))
        network = opts.get("force-network-mode") or None
        worker_platform, default_target = df.build_platform(bridge)

        def convert_one(platform: str | None) -> tuple[Any, Any]:
            converted = convert_dockerfile(
                convert.pipeline_to_dockerfile(loaded), data, language=convert.LANGUAGE,
                target=convert.default_target(loaded, target), build_args=args,
                named_contexts=contexts if platform == first else df.named_contexts(
                    opts, bridge, platform),
                image_resolver=lambda ref, p: bridge.resolve_image_config(ref, p)[1],
                target_platform=platform or default_target, build_platform=worker_platform,
                exclude_patterns=df.ignore_patterns(bridge, filename),
                no_cache_stages=df.no_cache_stages(opts), extra_hosts=df.extra_hosts(opts),
                network_mode=network if network in ("none", "host") else None,
                ulimits=df.ulimits(opts), cgroup_parent=opts.get("cgroup-parent", ""),
                linux_resources=df.linux_resources(opts),
                image_resolve_mode=df.image_resolve_mode(opts),
                labels=df.labels(opts), warn=bridge.warn)
            return converted.state.marshal(platform or default_target), converted.image_config

        if len(targets) > 1:
            return df.multi_platform_result(targets, convert_one)
        definition, config = convert_one(first)
        return FrontendResult(definition=definition, image_config=config)
