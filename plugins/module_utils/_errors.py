# -*- coding: utf-8 -*-
# Copyright: contributors to the oidc.tokens collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one exception base of the collection.

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
