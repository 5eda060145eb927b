"""Endpoint, region and credentials of an s3:// store, found as the AWS CLI finds them.

- endpoint and region: c3fs's settings (flag > environment > config file: `c3fs.settings`),
  else the AWS profile's `endpoint_url` and `region` (~/.aws/config), else AWS, us-east-1.
- credentials: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (with AWS_SESSION_TOKEN) when
  set and no profile is named; else botocore's chain for the profile (--profile,
  C3FS_PROFILE, AWS_PROFILE or `profile` in the config file; else `default`): the
  environment (ignored for a profile named with --profile or C3FS_PROFILE, as `aws
  --profile` ignores it), ~/.aws/credentials and ~/.aws/config (keys, assume-role,
  credential_process, SSO from its token cache), web identity, container credentials, the
  instance metadata service. botocore is imported only then: the common case of keys in the
  environment costs no start-up time.

Temporary credentials are handed to obstore through its `credential_provider` callback and
refreshed by botocore before they expire. Secret keys and tokens never leave this module
but to obstore: `describe` and errors name where credentials came from, never what they are.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from c3fs import settings
from c3fs.errors import StoreError, one_line

log = logging.getLogger(__name__)

DEFAULT_REGION = "us-east-1"
# How long obstore keeps a credential before it asks again; botocore refreshes temporary
# credentials 10-15 minutes before they expire, so what it hands out is good for longer.
PROVIDER_TTL = timedelta(minutes=5)
EXPLICIT_PROFILE = ("--profile", "env C3FS_PROFILE")  # sources that ignore env keys


@dataclass
class AwsSettings:
    endpoint: str | None
    region: str
    credentials: dict[str, str] | None  # static keys, or None with `provider`
    provider: Any = None  # a callable for obstore's credential_provider
    source: str = ""  # where the credentials come from, for messages (never a secret)
    found_in: dict[str, str] = field(default_factory=dict)  # endpoint/region: what profile
    secrets: tuple[str, ...] = field(default=(), repr=False)

    def all_secrets(self) -> tuple[str, ...]:
        """Every secret handed out so far (to scrub from messages)."""
        return self.secrets + (self.provider.secrets() if self.provider is not None else ())


def resolve(**overrides: str | None) -> AwsSettings:
    """The S3 settings and credentials, as the module doc says; `overrides` (endpoint,
    region, access_key_id, secret_access_key, session_token) win over everything."""
    endpoint = overrides.get("endpoint") or settings.value("endpoint")
    region = overrides.get("region") or settings.value("region")
    keys = {name: overrides.get(name) or os.environ.get(var) for name, var in (
        ("access_key_id", "AWS_ACCESS_KEY_ID"), ("secret_access_key", "AWS_SECRET_ACCESS_KEY"),
        ("session_token", "AWS_SESSION_TOKEN"))}
    profile = settings.get("profile")
    explicit = profile.source in EXPLICIT_PROFILE and not overrides.get("access_key_id")
    if keys["access_key_id"] and keys["secret_access_key"] and not explicit:
        static = {k: v for k, v in keys.items() if v}
        secrets = tuple(v for k, v in static.items() if k != "access_key_id")
        return AwsSettings(endpoint, region or DEFAULT_REGION, static,
                           source="environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)",
                           secrets=secrets)
    return _from_botocore(profile, endpoint, region)


def _from_botocore(profile: settings.Setting, endpoint: str | None,
                   region: str | None) -> AwsSettings:
    import botocore.exceptions
    import botocore.session

    name = profile.value
    origin = "--profile or C3FS_PROFILE" if profile.source == "env C3FS_PROFILE" else profile.source
    where = f"AWS profile {name!r} (from {origin})" if name else "the AWS default chain"
    try:
        session = botocore.session.Session(profile=name)
        scoped = session.get_scoped_config()
        credentials = session.get_credentials()
        found_in = {}
        if not region and (region := session.get_config_variable("region")):
            found_in["region"] = where
        if not endpoint and (endpoint := scoped.get("endpoint_url")):
            found_in["endpoint"] = where
        region = region or DEFAULT_REGION
    except botocore.exceptions.ProfileNotFound:
        raise StoreError(f"no AWS profile {name!r} (from {origin}) in "
                         f"{_config_files()}") from None
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise StoreError(f"cannot get AWS credentials from {where}: {one_line(str(exc))}") from None
    if credentials is None:
        raise StoreError(
            f"no AWS credentials found for {where}: set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, name a profile (--profile, AWS_PROFILE, `profile` in the "
            f"c3fs config) of {_config_files()}, or run on a machine with an instance or "
            "container role")
    method = getattr(credentials, "method", "") or "unknown"
    source = f"{where}, {method}"
    log.debug("S3 credentials from %s", source)
    return AwsSettings(endpoint, region, None, _Provider(credentials, source), source,
                       found_in=found_in)


def _config_files() -> str:
    config = os.environ.get("AWS_CONFIG_FILE") or "~/.aws/config"
    shared = os.environ.get("AWS_SHARED_CREDENTIALS_FILE") or "~/.aws/credentials"
    return f"{config} or {shared}"


class _Provider:
    """obstore's credential_provider over botocore's credentials (refreshed by botocore)."""

    def __init__(self, credentials: Any, source: str) -> None:
        from botocore.credentials import RefreshableCredentials

        self._credentials = credentials
        self._refreshable = isinstance(credentials, RefreshableCredentials)
        self._source = source
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self) -> dict:
        import botocore.exceptions

        try:
            frozen = self._credentials.get_frozen_credentials()
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise StoreError(f"cannot refresh AWS credentials of {self._source}: "
                             f"{one_line(str(exc))}") from None
        with self._lock:
            self._seen.update(s for s in (frozen.secret_key, frozen.token) if s)
        expires = datetime.now(UTC) + PROVIDER_TTL if self._refreshable else None
        return {"access_key_id": frozen.access_key, "secret_access_key": frozen.secret_key,
                "token": frozen.token, "expires_at": expires}

    def secrets(self) -> tuple[str, ...]:
        with self._lock:
            return tuple(self._seen)

    def __repr__(self) -> str:
        return f"<AWS credentials of {self._source}>"
