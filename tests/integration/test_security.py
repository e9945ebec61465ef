"""Optional bearer key (constant-time, case-sensitive) and CORS (off unless origins are listed)."""

from __future__ import annotations

import pytest

KEY = "sk-Test-Key"


@pytest.fixture
async def locked(make_client):
    return await make_client(server={"api_key": KEY})


@pytest.mark.parametrize(
    "header",
    [None, "Bearer wrong", f"Bearer {KEY.lower()}", f"Basic {KEY}", KEY, "Bearer", f"Bearer {KEY}x"],
)
async def test_requests_without_the_right_key_get_401_in_openai_shape(locked, header):
    headers = {"Authorization": header} if header is not None else {}
    resp = await locked.post("/v1/completions", json={"prompt": "x", "max_tokens": 1}, headers=headers)
    assert resp.status == 401
    err = (await resp.json())["error"]
    assert err["type"] == "authentication_error"
    assert err["code"] == "invalid_api_key"


async def test_the_right_key_passes_any_scheme_case(locked):
    for scheme in ("Bearer", "bearer"):
        resp = await locked.post("/v1/completions", json={"prompt": "x", "max_tokens": 1},
                                 headers={"Authorization": f"{scheme} {KEY}"})
        assert resp.status == 200


async def test_health_and_metrics_are_public_by_default(locked):
    assert (await locked.get("/health")).status == 200
    assert (await locked.get("/metrics")).status == 200
    assert (await locked.get("/v1/models")).status == 401


async def test_protect_metrics_locks_health_and_metrics(make_client):
    client = await make_client(server={"api_key": KEY, "protect_metrics": True})
    assert (await client.get("/health")).status == 401
    assert (await client.get("/metrics")).status == 401
    ok = await client.get("/metrics", headers={"Authorization": f"Bearer {KEY}"})
    assert ok.status == 200


async def test_no_cors_headers_by_default(make_client):
    client = await make_client()
    resp = await client.post("/v1/completions", json={"prompt": "x", "max_tokens": 1},
                             headers={"Origin": "https://app.example"})
    assert "Access-Control-Allow-Origin" not in resp.headers
    preflight = await client.options("/v1/completions", headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "POST"})
    assert "Access-Control-Allow-Origin" not in preflight.headers


async def test_cors_allows_listed_origins_and_preflight_needs_no_key(make_client):
    client = await make_client(server={"api_key": KEY, "allowed_origins": ("https://app.example",)})
    preflight = await client.options("/v1/completions", headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type"})
    assert preflight.status == 200
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://app.example"
    resp = await client.post("/v1/completions", json={"prompt": "x", "max_tokens": 1},
                             headers={"Origin": "https://app.example", "Authorization": f"Bearer {KEY}"})
    assert resp.status == 200
    assert resp.headers["Access-Control-Allow-Origin"] == "https://app.example"
    other = await client.options("/v1/completions", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert other.headers.get("Access-Control-Allow-Origin") != "https://evil.example"
