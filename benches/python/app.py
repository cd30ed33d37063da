"""The trigger path as a team would write it without stepgate, for the benchmark's ratio.

FastAPI + PyJWT + redis-py, run by uvicorn with one worker process per core. It does what
stepgate's admission does before the 202, the usual way: verify the RS256 access token
against the issuer's JWKS (found by OIDC discovery, keys cached by PyJWKClient), check the
caller against the workflow's allowed clients and scope, count the caller in a fixed-window
rate limit (INCR + EXPIRE), and XADD the request to the workflow's stream. No audit trail.

Environment: ISSUER, AUDIENCE, REDIS_URL.
"""
import json
import os
import time
import urllib.request
import uuid

import jwt
import redis.asyncio as redis
from fastapi import FastAPI, Header, HTTPException
from pydantic import BaseModel

ISSUER = os.environ["ISSUER"]
AUDIENCE = os.environ["AUDIENCE"]
POLICY = {"orders": {"clients": {"billing-service"}, "scope": "workflows:trigger"}}
REQUESTS_PER_MINUTE = 1_000_000_000

with urllib.request.urlopen(f"{ISSUER}/.well-known/openid-configuration") as discovery:
    jwks = jwt.PyJWKClient(json.load(discovery)["jwks_uri"], cache_keys=True)
store = redis.from_url(os.environ["REDIS_URL"])
app = FastAPI()


class Trigger(BaseModel):
    input: dict


@app.post("/v1/workflows/{workflow}/executions", status_code=202)
async def trigger(workflow: str, body: Trigger, authorization: str = Header(default="")):
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise HTTPException(401, "missing bearer token")
    try:
        key = jwks.get_signing_key_from_jwt(token).key
        claims = jwt.decode(token, key, algorithms=["RS256"], audience=AUDIENCE, issuer=ISSUER)
    except jwt.PyJWTError as error:
        raise HTTPException(401, str(error))
    rule = POLICY.get(workflow)
    if (
        rule is None
        or claims.get("client_id") not in rule["clients"]
        or rule["scope"] not in claims.get("scope", "").split()
    ):
        raise HTTPException(403, "not allowed")
    window = f"rl:{claims['sub']}:{int(time.time() // 60)}"
    async with store.pipeline(transaction=True) as pipe:
        count, _ = await pipe.incr(window).expire(window, 60).execute()
    if count > REQUESTS_PER_MINUTE:
        raise HTTPException(429, "rate limited", headers={"Retry-After": "60"})
    request_id = str(uuid.uuid4())
    await store.xadd(
        f"stream:{workflow}",
        {"request_id": request_id, "subject": claims["sub"], "input": json.dumps(body.input)},
    )
    return {"request_id": request_id, "status": "queued"}
