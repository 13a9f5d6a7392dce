"""Dependencies as Annotated aliases: services, the caller and its roles, a job."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.api.auth import Principal
from service.api.problems import ApiError
from service.api.services import Services
from service.api.viewer_links import LinkError, is_link_token
from service.jobs.job import Job, is_job_id
from service.runtime.config import KeyRole

_bearer = HTTPBearer(auto_error=False, description="API key: `Authorization: Bearer dscm_...`")


def get_services(request: Request) -> Services:
    """The app's Services; 503 not_started while the app starts or stops."""
    services: Services | None = getattr(request.app.state, "services", None)
    if services is None:
        raise ApiError(503, "not_started", "the service is starting or stopping")
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


CredentialsDep = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def get_principal(services: ServicesDep, credentials: CredentialsDep) -> Principal:
    """Who sent the request: the API key's principal, or the anonymous one when allowed. 401 with a
    Bearer challenge for no key or an unknown one."""
    challenge = {"WWW-Authenticate": 'Bearer realm="dscm"'}
    if credentials is None:
        anonymous = services.keyring.anonymous()
        if anonymous is not None:
            return anonymous
        raise ApiError(
            401,
            "unauthenticated",
            "send an API key: Authorization: Bearer <key>",
            headers=challenge,
        )
    principal = services.keyring.authenticate(credentials.credentials)
    if principal is None:
        raise ApiError(401, "invalid_api_key", "the API key is not valid", headers=challenge)
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def require(role: KeyRole) -> Any:
    """A dependency that returns the principal if it holds ``role``, else refuses with 403."""

    def check(principal: PrincipalDep) -> Principal:
        """The principal, if it holds the role; 403 forbidden otherwise."""
        if not principal.has(role):
            raise ApiError(403, "forbidden", f"this API key lacks the {role!r} role")
        return principal

    return Depends(check)


SubmitterDep = Annotated[Principal, require("submit")]
ReaderDep = Annotated[Principal, require("read")]


def find_job(services: Services, principal: Principal, job_id: str) -> Job:
    """The caller's job, or 404 for a malformed id, a missing job and another tenant's job alike."""
    job = services.store.get(job_id, principal.tenant_scope) if is_job_id(job_id) else None
    if job is None:
        raise ApiError(404, "job_not_found", "no such job")
    return job


def get_viewable_job(job_id: str, services: ServicesDep, credentials: CredentialsDep) -> Job:
    """The job, for a key with the read role or for a signed viewer link to this very job.

    Only the job record and its Deep Zoom tiles take a link; a link to another job, or of
    another tenant, gets the same 404 as a job that does not exist.
    """
    if credentials is not None and is_link_token(credentials.credentials):
        try:
            claims = services.links.verify(credentials.credentials)
        except LinkError as exc:
            code = "viewer_link_expired" if exc.expired else "invalid_viewer_link"
            raise ApiError(401, code, str(exc)) from exc
        if claims.job_id != job_id:
            raise ApiError(404, "job_not_found", "no such job")
        principal = Principal(claims.tenant, frozenset({"read"}), None)
    else:
        principal = get_principal(services, credentials)
        if not principal.has("read"):
            raise ApiError(403, "forbidden", "this API key lacks the 'read' role")
    return find_job(services, principal, job_id)


ViewableJobDep = Annotated[Job, Depends(get_viewable_job)]
