"""OpenAPI 3.1 description of the feature server (served at ``GET /openapi.json``)."""

from __future__ import annotations

from typing import Any

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "object", "required": ["code", "message"],
                             "properties": {"code": {"type": "string"}, "message": {"type": "string"},
                                            "problems": {"type": "array", "items": {"type": "object"}}}}},
}


def _errors(*codes: int) -> dict[str, Any]:
    text = {400: "bad input (says what is wrong)", 401: "missing or wrong bearer token", 413: "body too large",
            415: "Content-Type is not application/json", 503: "Redis or Kafka unavailable"}
    return {str(c): {"description": text[c], "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
            for c in codes}


def spec(max_entities: int = 1000, max_body_bytes: int = 1 << 20) -> dict[str, Any]:
    """The document; limits are the server's."""
    key_values = {"type": "array", "items": {"type": ["string", "integer"]}, "maxItems": max_entities}
    return {
        "openapi": "3.1.0",
        "info": {"title": "skewless feature server", "version": "1",
                 "description": "Online features exactly as docs/semantics.md defines them, with per-value status and age. "
                                f"Request bodies are at most {max_body_bytes} bytes."},
        "security": [{"bearer": []}],
        "paths": {
            "/get-online-features": {"post": {
                "summary": "Feature values for entities at now or a tile-aligned as_of",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "$ref": "#/components/schemas/FeaturesRequest"}}}},
                "responses": {"200": {"description": "values, statuses and ages per feature, source progress",
                                      "content": {"application/json": {"schema": {"$ref": "#/components/schemas/FeaturesResponse"}}}},
                              **_errors(400, 401, 413, 415, 503)}}},
            "/push": {"post": {
                "summary": "Validate events against the source schema and produce them to its topic (all or none)",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "$ref": "#/components/schemas/PushRequest"}}}},
                "responses": {"200": {"description": "Kafka positions per event",
                                      "content": {"application/json": {"schema": {"type": "object"}}}},
                              **_errors(400, 401, 413, 415, 503)}}},
            "/health": {"get": {"summary": "Liveness and Redis reachability", "security": [],
                                "responses": {"200": {"description": "ok"}, **_errors(503)}}},
            "/metrics": {"get": {"summary": "Prometheus text: requests and latency per endpoint, view freshness",
                                 "responses": {"200": {"description": "text/plain; version=0.0.4"}, **_errors(401)}}},
            "/openapi.json": {"get": {"summary": "This document", "security": [],
                                      "responses": {"200": {"description": "OpenAPI 3.1"}}}},
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": _ERROR,
                "FeaturesRequest": {
                    "type": "object", "additionalProperties": False, "required": ["entities"],
                    "properties": {
                        "features": {"type": "array", "minItems": 1, "items": {"type": "string"},
                                     "description": "'view:feature' references or view names"},
                        "feature_service": {"type": "string"},
                        "entities": {"type": "object", "minProperties": 1, "additionalProperties": key_values,
                                     "description": "join key -> values (one per entity; all lists of equal length)"},
                        "as_of": {"type": ["integer", "string"],
                                  "description": "epoch ms or ISO-8601 with zone; a multiple of every stored tile size"},
                    },
                    "oneOf": [{"required": ["features"]}, {"required": ["feature_service"]}],
                },
                "FeaturesResponse": {
                    "type": "object",
                    "required": ["features", "refs", "entities", "values", "statuses", "ages_ms", "now_ms", "as_of_ms",
                                 "progress", "batch_runs", "found", "versions"],
                    "properties": {
                        "features": {"type": "array", "items": {"type": "string"}},
                        "refs": {"type": "array", "items": {"type": "string"},
                                 "description": "'view:feature' per entry of features"},
                        "entities": {"type": "object", "additionalProperties": {"type": "array"},
                                     "description": "join key -> values, as requested"},
                        "values": {"type": "object", "additionalProperties": {"type": "array"},
                                   "description": "feature -> value per entity"},
                        "statuses": {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "string"}},
                                     "description": "feature -> status per entity: present|stale|expired|incomplete"},
                        "ages_ms": {"type": "object", "additionalProperties": {"type": "array", "items": {"type": ["integer", "null"]}},
                                    "description": "feature -> read instant minus the newest data time the value reflects"},
                        "now_ms": {"type": "integer"}, "as_of_ms": {"type": ["integer", "null"]},
                        "progress": {"type": "object"}, "batch_runs": {"type": "object"},
                        "found": {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "boolean"}},
                                  "description": "view -> per entity: whether the store holds any state (key) of the entity "
                                                 "for that view. false: nothing known, e.g. a mistyped or never-seen id; its "
                                                 "values are still the contract's (a COUNT is 0) and its statuses unchanged"},
                        "versions": {"type": "object", "additionalProperties": {"type": "integer"},
                                     "description": "view -> the version its values are of (a view declared in two "
                                                    "versions serves the one its active-version record names)"},
                    },
                },
                "PushRequest": {
                    "type": "object", "additionalProperties": False, "required": ["source", "events"],
                    "properties": {"source": {"type": "string"}, "events": {"type": "array", "items": {"type": "object"}}},
                },
            },
        },
    }
