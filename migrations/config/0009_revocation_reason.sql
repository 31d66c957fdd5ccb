-- Why a certificate was revoked (RFC 5280 reason, as `weir cert revoke --reason` names it); NULL while valid,
-- and for revocations recorded before reasons were kept (shown and listed in the CRL as "unspecified").
ALTER TABLE certificates ADD COLUMN revocation_reason TEXT;
