"""Request bodies of the HTTP API as pydantic models: validation at the boundary, and the source of the
OpenAPI document's schemas."""
