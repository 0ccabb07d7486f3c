"""HTTP routes of the device registry (admin): enrol, rotate and revoke a device's key, each a
device leaf in the log."""


import time
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import APIRouter, Depends, Path
from meterchain.backend.access.model import DEVICE_PATTERN
from meterchain.backend.api.errors import ApiError
from meterchain.backend.api.state import ApiState
from meterchain.backend.devices import registry
from meterchain.backend.store import KeyStore
from meterchain.contract.errors import MeterchainError
from meterchain.contract.leaves import DeviceLeaf
from meterchain.contract.reading import MAX_SAFE_INT
from pydantic import BaseModel, ConfigDict, Field

Device = Annotated[str, Path(pattern=DEVICE_PATTERN, description="Device id")]
SafeInt = Annotated[int, Field(ge=0, le=MAX_SAFE_INT)]

class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class EnrolRequest(_Strict):
    device: str = Field(pattern=DEVICE_PATTERN)
    public_key: str = Field(
        min_length=1, max_length=4096,
        description="P-256 SubjectPublicKeyInfo: PEM text or base64 of the DER",
    )


class RotateRequest(_Strict):
    public_key: str = Field(min_length=1, max_length=4096)
    valid_from: SafeInt | None = Field(default=None, description="First sequence of the new key")


class RevokeRequest(_Strict):
    valid_from: SafeInt | None = Field(default=None, description="First sequence refused")


class DeviceLeafOut(BaseModel):
    device: str
    event: str
    key_id: str
    valid_from: int
    time: int


def devices_router(state: ApiState, require_admin: Callable[..., object]) -> APIRouter:
    """The registry's write routes; every one needs the admin token."""
    router = APIRouter(tags=["devices"])

    async def _write(action: Callable[[KeyStore], Awaitable[DeviceLeaf]]) -> DeviceLeafOut:
        assert state.writer is not None
        try:
            async with state.write_lock:
                leaf = await action(state.writer)
        except MeterchainError as exc:
            status = 409 if exc.check == "registry" else 400
            raise ApiError(status, exc.check, str(exc),
                           "fix the request; GET the device's state from the CLI if unsure") from None
        return DeviceLeafOut(device=leaf.device, event=leaf.event.value, key_id=leaf.key_id.hex(),
                             valid_from=leaf.valid_from, time=leaf.time)

    @router.post("/api/v1/devices", status_code=201, response_model=DeviceLeafOut,
              dependencies=[Depends(require_admin)])
    async def enrol_device(body: EnrolRequest) -> DeviceLeafOut:
        """Enrol a device: its key becomes valid from sequence 1 (a device leaf in the log)."""
        return await _write(lambda s: registry.enrol(s, body.device, body.public_key.encode(),
                                                     int(time.time())))

    @router.post("/api/v1/devices/{device}/rotate", response_model=DeviceLeafOut,
              dependencies=[Depends(require_admin)])
    async def rotate_device(device: Device, body: RotateRequest) -> DeviceLeafOut:
        """Rotate a device's key from ``valid_from`` (default: after its last committed reading)."""
        return await _write(lambda s: registry.rotate(s, device, body.public_key.encode(),
                                                      int(time.time()), body.valid_from))

    @router.post("/api/v1/devices/{device}/revoke", response_model=DeviceLeafOut,
              dependencies=[Depends(require_admin)])
    async def revoke_device(device: Device, body: RevokeRequest) -> DeviceLeafOut:
        """Revoke a device's key from ``valid_from`` (default: after its last committed reading)."""
        return await _write(lambda s: registry.revoke(s, device, int(time.time()), body.valid_from))


    return router
