"""``POST /forget/{user_id}`` and ``GET /forget/requests/{id}``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, Response, status
from sqlalchemy import select

from service.api.deps import (
    AdminCaller,
    ForgetCaller,
    OnForgetAccepted,
    ReadSession,
    ServingDep,
    SettingsDep,
    WriteSession,
)
from service.api.schemas import (
    EXTERNAL_ID,
    UUID_PATTERN,
    CertificateOut,
    ChainOut,
    ForgetRequestOut,
    Problem,
    PublicKeyOut,
    ReceiptOut,
)
from service.core.db.models import Certificate, ForgetRequest, Receipt, User
from service.domain.forget import UnknownUser, request_forget
from service.domain.receipts import as_document

router = APIRouter(tags=["forget"])


def _external_id(session, request: ForgetRequest) -> str | None:
    if request.user_id is None:
        return None
    return session.scalar(select(User.external_id).where(User.id == request.user_id))


@router.post(
    "/forget/{user_id}",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=ForgetRequestOut,
    responses={
        200: {"model": ForgetRequestOut, "description": "A request for this user already exists"},
        404: {"model": Problem, "description": "No such user"},
    },
    summary="Ask to forget a user",
)
def forget_user(
    user_id: Annotated[str, Path(pattern=EXTERNAL_ID, description="The user's external id")],
    response: Response,
    session: WriteSession,
    serving: ServingDep,
    on_accepted: OnForgetAccepted,
    caller: ForgetCaller,
) -> ForgetRequestOut:
    """Accept a deletion request. From this moment the user's history is no longer used in
    serving; their raw interactions stay, quarantined, until an adapter that forgets them is
    serving, and are then deleted. Repeating the request returns the same request (200)."""
    try:
        with session.begin():
            forget, created = request_forget(session, user_id, salt=serving.salt, actor=caller.name)
            body = ForgetRequestOut.of(forget, user_id if forget.user_id is not None else None)
    except UnknownUser:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"unknown user {user_id!r}: no such user in the catalogue"
        ) from None
    response.headers["Location"] = body.status_url
    if not created:
        response.status_code = status.HTTP_200_OK
    else:
        on_accepted(forget.request_id)
    return body


@router.get(
    "/forget/requests/{request_id}",
    response_model=ForgetRequestOut,
    responses={404: {"model": Problem, "description": "No such request"}},
    summary="Status of a forget request",
)
def forget_status(
    request_id: Annotated[str, Path(pattern=UUID_PATTERN, description="The request id")],
    session: ReadSession,
    caller: ForgetCaller,
) -> ForgetRequestOut:
    forget = session.scalars(
        select(ForgetRequest).where(ForgetRequest.request_id == request_id)
    ).first()
    if forget is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no forget request {request_id}")
    return ForgetRequestOut.of(forget, _external_id(session, forget))


@router.get(
    "/forget/requests/{request_id}/certificate",
    response_model=CertificateOut,
    responses={404: {"model": Problem, "description": "No such request, or not completed yet"}},
    summary="Proof that a completed request was honoured",
)
def forget_certificate(
    request_id: Annotated[str, Path(pattern=UUID_PATTERN, description="The request id")],
    session: ReadSession,
    settings: SettingsDep,
    caller: ForgetCaller,
) -> CertificateOut:
    row = session.execute(
        select(ForgetRequest, Certificate)
        .join(Certificate, Certificate.request_id == ForgetRequest.id)
        .where(ForgetRequest.request_id == request_id)
    ).first()
    if row is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            f"no certificate for {request_id}: the request does not exist or is not completed",
        )
    forget, cert = row
    chain = session.scalars(
        select(Receipt).where(Receipt.request_id == forget.id).order_by(Receipt.seq)
    ).all()
    return CertificateOut(
        request_id=forget.request_id,
        user_hash=cert.user_hash,
        batch=cert.job_id,
        base_model=cert.base_model_id,
        adapter_version=cert.adapter_version_id,
        requested_at=cert.requested_at,
        completed_at=cert.completed_at,
        interactions_deleted=cert.interactions_deleted,
        gate=cert.gate,
        public_key=settings.signer().public_hex,
        receipts=[ReceiptOut(**as_document(r)) for r in chain],
    )


@router.get(
    "/certificates/public-key",
    response_model=PublicKeyOut,
    summary="The key that signs deletion receipts (no key needed: anyone may verify)",
)
def certificate_public_key(settings: SettingsDep) -> PublicKeyOut:
    return PublicKeyOut(public_key=settings.signer().public_hex)


@router.get(
    "/certificates/chain",
    response_model=ChainOut,
    summary="Every receipt in chain order (admin), for `e2urec-service verify-certificate`",
)
def certificate_chain(
    session: ReadSession,
    settings: SettingsDep,
    caller: AdminCaller,
    after_seq: Annotated[
        int, Query(ge=0, le=2**31 - 1, description="Receipts after this sequence number")
    ] = 0,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> ChainOut:
    rows = session.scalars(
        select(Receipt).where(Receipt.seq > after_seq).order_by(Receipt.seq).limit(limit)
    ).all()
    return ChainOut(
        public_key=settings.signer().public_hex,
        receipts=[ReceiptOut(**as_document(r)) for r in rows],
    )
