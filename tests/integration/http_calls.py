"""Request helpers that integration tests share."""

from __future__ import annotations


async def post_completion(client, **body) -> dict:
    """POST /v1/completions with `body`; the JSON response, which must be a 200."""
    resp = await client.post("/v1/completions", json=body)
    assert resp.status == 200, await resp.text()
    return await resp.json()
