"""Build-check rules (BuildKit's names, descriptions and documentation URLs), their
configuration and findings.

Configuration comes from the ``# check=skip=A,B;error=true;experimental=C`` directive, or the
``BUILDKIT_DOCKERFILE_CHECK`` build arg, which replaces it. Experimental rules run only when
enabled with ``experimental=``. ``InvalidBaseImagePlatform`` needs the pulled image's platform,
so the converter reports it (:func:`base_image_platform_warning`) and the frontend applies the
report's :class:`CheckConfig` to it.
"""

from __future__ import annotations

import re

from pybk.core.model import Model, field
from pybk.frontends.dockerfile.commands import Location

CHECK_BUILD_ARG = "BUILDKIT_DOCKERFILE_CHECK"
_URL = "https://docs.docker.com/go/dockerfile/rule/{}/"


class Rule(Model):
    """A lint rule: BuildKit's name, description and documentation URL."""

    name: str
    description: str
    experimental: bool = False

    @property
    def url(self) -> str:
        kebab = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "-", self.name)
        return _URL.format(kebab.lower())


RULES: dict[str, Rule] = {
    rule.name: rule
    for rule in (
        Rule("StageNameCasing", "Stage names should be lowercase"),
        Rule("FromAsCasing", "The 'as' keyword should match the case of the 'from' keyword"),
        Rule(
            "NoEmptyContinuation", "Empty continuation lines will become errors in a future release"
        ),
        Rule(
            "ConsistentInstructionCasing",
            "All commands within the Dockerfile should use the same casing (either upper or lower)",
        ),
        Rule("DuplicateStageName", "Stage names should be unique"),
        Rule("ReservedStageName", "Reserved words should not be used as stage names"),
        Rule(
            "JSONArgsRecommended",
            "JSON arguments recommended for ENTRYPOINT/CMD to prevent unintended behavior "
            "related to OS signals",
        ),
        Rule(
            "MaintainerDeprecated",
            "The MAINTAINER instruction is deprecated, use a label instead to define an image author",
        ),
        Rule("UndefinedArgInFrom", "FROM command must use declared ARGs"),
        Rule(
            "WorkdirRelativePath",
            "Relative workdir without an absolute workdir declared within the build can have "
            "unexpected results if the base image changes",
        ),
        Rule("UndefinedVar", "Variables should be defined before their use"),
        Rule(
            "MultipleInstructionsDisallowed",
            "Multiple instructions of the same type should not be used in the same stage",
        ),
        Rule(
            "LegacyKeyValueFormat",
            "Legacy key/value format with whitespace separator should not be used",
        ),
        Rule(
            "InvalidBaseImagePlatform",
            "Base image platform does not match expected target platform",
        ),
        Rule(
            "RedundantTargetPlatform",
            "Setting platform to predefined $TARGETPLATFORM in FROM is redundant as this is the "
            "default behavior",
        ),
        Rule(
            "SecretsUsedInArgOrEnv", "Sensitive data should not be used in the ARG or ENV commands"
        ),
        Rule(
            "InvalidDefaultArgInFrom",
            "Default value for global ARG results in an empty or invalid base image name",
        ),
        Rule(
            "FromPlatformFlagConstDisallowed",
            "FROM --platform flag should not use a constant value",
        ),
        Rule("CopyIgnoredFile", "Attempting to Copy file that is excluded by .dockerignore"),
        Rule(
            "InvalidDefinitionDescription",
            "Comment for build stage or argument should follow the format: `# <arg/stage name> "
            "<description>`. If this is not intended to be a description comment, add an empty "
            "line or comment between the instruction and the comment.",
            experimental=True,
        ),
        Rule("ExposeProtoCasing", "Protocol in EXPOSE instruction should be lowercase"),
        Rule(
            "ExposeInvalidFormat",
            "IP address and host-port mapping should not be used in EXPOSE instruction. This "
            "will become an error in a future release",
        ),
    )
}


class Warning(Model):  # noqa: A001 - BuildKit's name for a lint finding
    """One finding: rule name, message, file and 1-based line."""

    rule: str
    message: str
    filename: str
    line: int

    @property
    def description(self) -> str:
        return RULES[self.rule].description

    @property
    def url(self) -> str:
        return RULES[self.rule].url


class CheckReport(Model):
    """All findings; ``error`` is True when ``error=true`` was set and something was found."""

    warnings: list[Warning]
    error: bool
    #: the check options in force (for the findings only a build sees)
    config: CheckConfig = field(factory=lambda: CheckConfig())

    @property
    def error_message(self) -> str | None:
        if not self.error:
            return None
        rules = list(dict.fromkeys(w.rule for w in self.warnings))
        return "lint violation found for rules: " + ", ".join(rules)


class CheckConfig(Model):
    """Parsed ``check=`` options."""

    skip: frozenset[str] = frozenset()
    skip_all: bool = False
    error: bool = False
    experimental: frozenset[str] = frozenset()
    experimental_all: bool = False

    def enabled(self, rule: Rule) -> bool:
        if self.skip_all or rule.name in self.skip:
            return False
        if rule.experimental:
            return self.experimental_all or rule.name in self.experimental
        return True


def parse_check_options(text: str) -> CheckConfig:
    """Parse ``skip=…;error=…;experimental=…`` (BuildKit ``ParseLintOptions``)."""
    text = text.strip()
    if not text:
        return CheckConfig()
    options: dict[str, object] = {}
    for part in text.split(";"):
        key, has_value, value = part.partition("=")
        if not has_value:
            raise ValueError(f'invalid check option "{part}"')
        key, value = key.strip(), value.strip()
        if key in ("skip", "experimental"):
            names = frozenset(v.strip() for v in value.split(","))
            if value == "all":
                options[f"{key}_all"] = True
            else:
                options[key] = names
        elif key == "error":
            lowered = {"1": "true", "t": "true", "0": "false", "f": "false"}.get(
                value, value.lower()
            )
            if lowered not in ("true", "false"):
                raise ValueError(f'failed to parse check option "{part}": invalid syntax')
            options["error"] = lowered == "true"
        else:
            raise ValueError(f'invalid check option "{key}"')
    return CheckConfig(**options)  # type: ignore[arg-type]


def base_image_platform_warning(
    image: str, expected: str, actual: str, location: Location
) -> Warning:
    """The InvalidBaseImagePlatform finding, for use once the base image's platform is known."""
    message = (
        f'Base image {image} was pulled with platform "{actual}", expected "{expected}" for '
        "current build"
    )
    return Warning("InvalidBaseImagePlatform", message, location.filename, location.start_line)
