# -*- coding: utf-8 -*-
# Copyright: contributors to the oidc.tokens collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The collection's exception base, the OAuth client's base error (shared by _oauth and _jwt), and the errors
of the account store and its private files.

Standard library only: the lookup's cache-hit path imports this file.

Internal to the oidc.tokens collection: no compatibility promise to anyone else.
"""

from __future__ import annotations


class OidcTokensError(Exception):
    """Base of every error raised by the collection's module_utils.

    The message is meant for users and logs: it names what failed and why,
    and never contains a secret (client secret, token, password).
    """


class AccountIdentityError(OidcTokensError):
    """A task names another issuer or client than the account it uses was made with.

    An account's refresh token is only ever sent to its own issuer, by its own client.
    """


# --- OAuth (_oauth, _jwt) ----------------------------------------------------------------------

class OAuthError(OidcTokensError):
    """Base of the errors of the OAuth client (_oauth) and of JWT verification (_jwt)."""


class TokenVerificationError(OAuthError):
    """A JWT failed verification: bad signature, unknown key, wrong issuer, expired, or alg none."""


# --- the account store -----------------------------------------------------------------------

class AccountStoreError(OidcTokensError):
    """Base of the store's errors; ``account`` and ``path`` say what it was about."""

    def __init__(self, message, account=None, path=None):
        super(AccountStoreError, self).__init__(message)
        self.account = account
        self.path = path


class InvalidAccountNameError(AccountStoreError):
    """A name that is not a safe oidc-agent account short name."""


class MissingDependencyError(AccountStoreError):
    """PyNaCl is not installed where the store runs."""


class AccountNotFoundError(AccountStoreError):
    """No account file of that name."""


class AccountExistsError(AccountStoreError):
    """``save(..., overwrite=False)`` found an account of that name."""


class WrongPasswordError(AccountStoreError):
    """The password does not open the account file (the hash key on line 6 differs)."""


class CorruptAccountError(AccountStoreError):
    """Truncated, damaged or tampered file, or plaintext that is not an account JSON object."""


class UnsupportedFormatError(AccountStoreError):
    """A file in a format the store does not read (pre-2.1 hex, GPG, CRLF, other parameters)."""


class PasswordSourceError(AccountStoreError):
    """No usable encryption password (missing, empty, unreadable, failing command)."""


class StorePermissionError(AccountStoreError):
    """Directory or file not owned by the running user, not a regular file, or not writable."""


class LockTimeoutError(AccountStoreError):
    """Another process held the account's lock for longer than the timeout."""


# --- private files and directories -----------------------------------------------------------

class PrivatePathError(OidcTokensError):
    """A private directory or lock file (_private_files) cannot be made or used as one.

    ``reason`` says which step failed, so that each caller words it for its user: 'create' (the
    directory), 'link', 'type' and 'owner' (what is there is a symbolic link, not a directory, or
    another user's: ``uid``), 'chmod' (tightening it to 0700), 'open' (the lock file).
    ``strerror`` is the operating system's word for 'create', 'chmod' and 'open'.
    """

    def __init__(self, message, reason, path, uid=None, strerror=None):
        super(PrivatePathError, self).__init__(message)
        self.reason = reason
        self.path = path
        self.uid = uid
        self.strerror = strerror
