"""The schemas of ``docs/asyncapi.yaml``, for checking what presence really sends.

The document is loaded once. A schema is named as under
``components.schemas`` (``"PresenceGlobal"``) and validated as JSON Schema
draft 7 (what AsyncAPI schemas extend), its ``$ref``s resolved within the
document.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft7Validator
from jsonschema.exceptions import best_match
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

DOCUMENT = Path(__file__).parent.parent / "docs" / "asyncapi.yaml"
_URI = "urn:presence:asyncapi"


@cache
def document() -> dict[str, Any]:
    """The AsyncAPI document, parsed."""
    found: dict[str, Any] = yaml.safe_load(DOCUMENT.read_text())
    return found


@cache
def _validator(schema_name: str) -> Draft7Validator:
    schemas = document()["components"]["schemas"]
    if schema_name not in schemas:
        raise KeyError(f"{DOCUMENT.name} has no schema {schema_name!r}")
    registry: Registry[Any] = Registry().with_resource(
        _URI, Resource.from_contents(document(), default_specification=DRAFT7)
    )
    ref = {"$ref": f"{_URI}#/components/schemas/{schema_name}"}
    return Draft7Validator(ref, registry=registry)


def validate(schema_name: str, instance: object) -> None:
    """Raise ``AssertionError`` naming the schema, the failing path and the
    value unless ``instance`` is valid under schema ``schema_name``."""
    error = best_match(_validator(schema_name).iter_errors(instance))
    if error is not None:
        where = "/".join(map(str, error.absolute_path)) or "(the whole value)"
        raise AssertionError(
            f"{schema_name} of {DOCUMENT.name}: {instance!r} is invalid at {where}: {error.message}"
        )
