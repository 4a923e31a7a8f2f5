"""``GET /apikeys``: the API keys' names, scopes and prefixes (admin scope; never a key or its hash)."""

from __future__ import annotations

from fastapi import APIRouter
from ..deps import AdminAccess, RuntimeDep
from ..errors import responses
from ..schemas import ApiKeyOut
from ..security import list_api_keys

router = APIRouter(tags=["keys"], dependencies=[AdminAccess])


@router.get("/apikeys", response_model=list[ApiKeyOut], responses=responses(401, 403))
def api_keys(runtime: RuntimeDep) -> list[ApiKeyOut]:
    """Every API key (create and revoke them with `photodex apikey`)."""
    return [ApiKeyOut(**row) for row in list_api_keys(runtime.collection.catalog)]  # type: ignore[arg-type]
