// Custom grant types of the test provider, added through node-oidc-provider's public
// provider.registerGrantType() API:
//   - RFC 8693 token exchange (urn:ietf:params:oauth:grant-type:token-exchange)
//   - a test-only resource owner password grant ("password") to get a user's access token
//
// Both issue real provider.Grant / provider.AccessToken / provider.RefreshToken models, so the
// provider's own refresh_token grant (rotation + reuse detection), revocation, introspection and
// userinfo work on what they issue.

import * as crypto from 'node:crypto';

import { errors } from 'oidc-provider';

export const GRANT_TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
export const GRANT_PASSWORD = 'password';
export const TT_ACCESS = 'urn:ietf:params:oauth:token-type:access_token';
export const TT_REFRESH = 'urn:ietf:params:oauth:token-type:refresh_token';
export const TT_JWT = 'urn:ietf:params:oauth:token-type:jwt';
export const TT_ID_TOKEN = 'urn:ietf:params:oauth:token-type:id_token';

const { InvalidRequest, InvalidScope, InvalidGrant, InvalidTarget } = errors;

const JWS_SHAPE = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/;

function epoch() {
  return Math.floor(Date.now() / 1000);
}

function asList(value) {
  if (value === undefined || value === null || value === '') return [];
  return (Array.isArray(value) ? value : [value]).filter((v) => typeof v === 'string' && v !== '');
}

function splitScope(scope) {
  return new Set((scope || '').split(' ').filter(Boolean));
}

function required(params, name) {
  const value = params[name];
  if (typeof value !== 'string' || value === '') {
    throw new InvalidRequest(`missing required parameter '${name}'`);
  }
  return value;
}

function b64urlJson(part) {
  return JSON.parse(Buffer.from(part, 'base64url').toString('utf8'));
}

// A compact JWS: its decoded header and payload, what was signed and the signature (malformed: `message`).
function parseJws(value, message) {
  const [h, p, s] = value.split('.');
  try {
    return {
      header: b64urlJson(h), payload: b64urlJson(p), signed: Buffer.from(`${h}.${p}`), signature: Buffer.from(s, 'base64url'),
    };
  } catch {
    throw new InvalidRequest(message);
  }
}

// RFC 8707 §2: a resource is an absolute URI without a fragment.
function checkResourceIndicator(value) {
  let url;
  try {
    url = new URL(value);
  } catch {
    throw new InvalidTarget(`resource '${value}' is not an absolute URI`);
  }
  if (url.hash || value.includes('#')) {
    throw new InvalidTarget(`resource '${value}' must not contain a fragment`);
  }
}

/**
 * env: {
 *   users: { name: {password, sub, ...} }, accountsBySub: Map,
 *   supportedScopes: Set, exchangeShape: 'common'|'strict',
 *   defaultResource: string|undefined (JWT access token mode),
 *   resourceServerInfo(identifier): object,
 *   signingKeys: Map(kid -> public KeyObject), jwtAccessTokens: Map(jti -> {grantId, seen}),
 *   ciIssuers: Map(issuer -> {keys: Map(kid -> public KeyObject)}) (--trusted-ci-issuer; empty: none),
 *   ciAudience: string (the audience a CI token must name), ciJtiMaxUses: number (0: no limit),
 *   ciScopes: Set (what an exchange of a CI token may ask for), ciSubjects: Map(sub -> {issuer, claims}),
 * }
 */
export function registerGrants(provider, env) {
  const {
    AccessToken, RefreshToken, Grant, ResourceServer,
  } = provider;

  // -- subject / actor token validation ------------------------------------------------------

  async function checkGrantAlive(grantId, label) {
    if (!grantId) return;
    const grant = await Grant.find(grantId, { ignoreExpiration: true });
    if (!grant || grant.isExpired) {
      throw new InvalidRequest(`${label} has been revoked (its grant no longer exists)`);
    }
  }

  async function validateOpaqueAccessToken(value, label) {
    const at = await AccessToken.find(value, { ignoreExpiration: true });
    if (!at) {
      throw new InvalidRequest(`${label} is not a valid access token of this provider (unknown, revoked or malformed)`);
    }
    if (at.isExpired) {
      throw new InvalidRequest(`${label} is expired`);
    }
    await checkGrantAlive(at.grantId, label);
    return {
      accountId: at.accountId, scope: at.scope, clientId: at.clientId, format: 'opaque',
    };
  }

  async function validateJwtAccessToken(value, label) {
    const {
      header, payload, signed, signature,
    } = parseJws(value, `${label} is not a valid access token of this provider (malformed JWT)`);
    const key = env.signingKeys.get(header.kid);
    if (header.alg !== 'RS256' || !key) {
      throw new InvalidRequest(`${label} is not signed by this provider`);
    }
    const ok = crypto.verify('sha256', signed, key, signature);
    if (!ok) {
      throw new InvalidRequest(`${label} has an invalid signature`);
    }
    if (String(header.typ).toLowerCase() !== 'at+jwt') {
      throw new InvalidRequest(`${label} is not a JWT access token (typ is not at+jwt)`);
    }
    if (payload.iss !== provider.issuer) {
      throw new InvalidRequest(`${label} was issued by another issuer`);
    }
    if (typeof payload.exp !== 'number' || payload.exp <= epoch()) {
      throw new InvalidRequest(`${label} is expired`);
    }
    if (typeof payload.sub !== 'string' || payload.sub === payload.client_id) {
      throw new InvalidRequest(`${label} does not represent a user`);
    }
    const issued = env.jwtAccessTokens.get(payload.jti);
    if (!issued) {
      throw new InvalidRequest(`${label} was not issued by this provider instance`);
    }
    await checkGrantAlive(issued.grantId, label);
    return {
      accountId: payload.sub, scope: payload.scope, clientId: payload.client_id, format: 'jwt',
    };
  }

  // -- a trusted CI issuer's JWT (GitLab id_tokens, GitHub Actions' OIDC token) as subject token ------
  //
  // --trusted-ci-issuer ISSUER=JWKS_PATH: a JWT from that issuer (its own keys, read from the JWKS
  // file) is accepted as subject token of type ...:jwt or ...:id_token when: RS256/ES256 signature
  // by a key of that JWKS, iss exactly ISSUER, aud containing --ci-audience, exp in the future,
  // nbf/iat not in the future, a string sub and jti. The exchanged tokens' subject is the CI token's
  // sub, unchanged (e.g. project_path:group/proj:ref_type:branch:ref:main); a sub that is also a
  // local user's is refused, so a CI issuer cannot speak for a person. --ci-jti-max-uses N limits
  // how often one CI token (its jti) may be exchanged: one exchange per worker needs N >= workers.

  const ciUses = new Map(); // `${iss} ${jti}` -> {uses, exp}
  const ciSweep = setInterval(() => {
    const now = epoch();
    for (const [key, entry] of ciUses) if (entry.exp < now) ciUses.delete(key);
  }, 30_000);
  ciSweep.unref();

  function peekIssuer(value) {
    if (!JWS_SHAPE.test(value)) return undefined;
    try {
      const payload = b64urlJson(value.split('.')[1]);
      return typeof payload.iss === 'string' ? payload.iss : undefined;
    } catch {
      return undefined;
    }
  }

  const CI_ALGS = { RS256: 'sha256', ES256: 'sha256' };

  function validateCiToken(value, label) {
    const {
      header, payload, signed, signature,
    } = parseJws(value, `${label} is not a valid JWT (malformed)`);
    const trusted = env.ciIssuers.get(payload.iss);
    if (!trusted) {
      throw new InvalidRequest(`${label} was not issued by a trusted CI issuer`);
    }
    const key = trusted.keys.get(header.kid);
    if (!CI_ALGS[header.alg] || !key) {
      throw new InvalidRequest(`${label} is not signed by a key of the CI issuer ${payload.iss} (kid or alg unknown)`);
    }
    const options = header.alg === 'ES256' ? { key, dsaEncoding: 'ieee-p1363' } : key;
    const ok = crypto.verify(CI_ALGS[header.alg], signed, options, signature);
    if (!ok) {
      throw new InvalidRequest(`${label} has an invalid signature`);
    }
    const audiences = asList(payload.aud);
    if (!audiences.includes(env.ciAudience)) {
      throw new InvalidRequest(`${label}'s audience does not include ${env.ciAudience}`);
    }
    const now = epoch();
    if (typeof payload.exp !== 'number' || payload.exp <= now) {
      throw new InvalidRequest(`${label} is expired`);
    }
    if ((typeof payload.nbf === 'number' && payload.nbf > now) || (typeof payload.iat === 'number' && payload.iat > now + 5)) {
      throw new InvalidRequest(`${label} is not valid yet`);
    }
    if (typeof payload.sub !== 'string' || payload.sub === '') {
      throw new InvalidRequest(`${label} has no subject`);
    }
    if (env.users && Object.values(env.users).some((u) => u.sub === payload.sub)) {
      throw new InvalidRequest(`${label}'s subject is a local user's; a CI issuer may not speak for a person`);
    }
    if (typeof payload.jti !== 'string' || payload.jti === '') {
      throw new InvalidRequest(`${label} has no jti`);
    }
    if (env.ciJtiMaxUses > 0) {
      const useKey = `${payload.iss} ${payload.jti}`;
      const entry = ciUses.get(useKey) || { uses: 0, exp: payload.exp };
      if (entry.uses >= env.ciJtiMaxUses) {
        throw new InvalidRequest(`${label} was already exchanged ${entry.uses} time(s) (at most ${env.ciJtiMaxUses})`);
      }
      entry.uses += 1;
      ciUses.set(useKey, entry);
    }
    env.ciSubjects.set(payload.sub, { issuer: payload.iss, claims: payload });
    return {
      accountId: payload.sub, scope: [...env.ciScopes].join(' '), clientId: undefined, format: 'ci', ci: true,
    };
  }

  async function validateSubjectToken(value, type, label) {
    if (env.ciIssuers.size > 0 && (type === TT_ID_TOKEN || type === TT_JWT)) {
      const iss = peekIssuer(value);
      if (type === TT_ID_TOKEN || (iss !== undefined && iss !== provider.issuer)) {
        if (iss === undefined || !env.ciIssuers.has(iss)) {
          throw new InvalidRequest(
            `${label}'s issuer ${iss === undefined ? '(none)' : iss} is neither this provider nor a trusted CI issuer`,
          );
        }
        return validateCiToken(value, label);
      }
    }
    return validateAccessToken(value, type, label);
  }

  async function validateAccessToken(value, type, label) {
    if (type !== TT_ACCESS && type !== TT_JWT) {
      throw new InvalidRequest(`unsupported ${label}_type '${type}'; expected ${TT_ACCESS} (or ${TT_JWT} for a JWT access token)`);
    }
    if (JWS_SHAPE.test(value)) {
      return validateJwtAccessToken(value, label);
    }
    if (type === TT_JWT) {
      throw new InvalidRequest(`${label} is not a JWT but ${label}_type says ${TT_JWT}`);
    }
    return validateOpaqueAccessToken(value, label);
  }

  async function loadAccount(ctx, accountId, label) {
    const account = await env.findAccount(ctx, accountId);
    if (!account) {
      throw new InvalidRequest(`${label}'s account no longer exists`);
    }
    return account;
  }

  // -- issuing ---------------------------------------------------------------------------------

  function targetsFor(ctx, { allowAudience }) {
    const resources = asList(ctx.oidc.params.resource);
    resources.forEach(checkResourceIndicator);
    const audiences = allowAudience ? asList(ctx.oidc.params.audience) : [];
    const targets = [...new Set([...resources, ...audiences])];
    if (targets.length === 0 && env.defaultResource) {
      targets.push(env.defaultResource);
    }
    return targets;
  }

  async function createGrant(client, accountId, scopes, targets) {
    const grant = new Grant({ accountId, clientId: client.clientId });
    const scope = [...scopes].join(' ');
    if (scope) {
      grant.addOIDCScope(scope);
      for (const target of targets) grant.addResourceScope(target, scope);
    }
    const grantId = await grant.save();
    return { grant, grantId };
  }

  // The same rules node-oidc-provider's own grants apply when they mint an access token.
  async function issueAccessToken(ctx, {
    client, accountId, grant, grantId, scopes, targets, gty, act, expiresIn,
  }) {
    const at = new AccessToken({
      accountId, client, grantId, gty, expiresIn,
    });
    if (targets.length) {
      const [target] = targets; // an access token has a single audience
      at.resourceServer = new ResourceServer(target, env.resourceServerInfo(target));
      at.scope = grant.getResourceScopeFiltered(
        target,
        [...scopes].filter(Set.prototype.has.bind(at.resourceServer.scopes)),
      );
    } else {
      at.scope = grant.getOIDCScopeFiltered(scopes);
    }
    if (act) ctx.oidcTestActClaim = act; // picked up by extraTokenClaims
    ctx.oidc.entity('AccessToken', at);
    const value = await at.save();
    return { at, value };
  }

  async function issueRefreshToken(ctx, {
    client, accountId, grantId, scopes, targets, gty,
  }) {
    const rt = new RefreshToken({
      accountId,
      client,
      grantId,
      gty,
      rotations: 0,
      scope: [...scopes].join(' '),
      resource: targets.length > 1 ? targets : targets[0],
    });
    ctx.oidc.entity('RefreshToken', rt);
    const value = await rt.save();
    return { rt, value };
  }

  // -- RFC 8693 token exchange ------------------------------------------------------------------

  async function tokenExchangeHandler(ctx) {
    const { client, params } = ctx.oidc;

    const subjectToken = required(params, 'subject_token');
    const subjectTokenType = required(params, 'subject_token_type');

    const requestedType = params.requested_token_type;
    if (requestedType !== undefined && requestedType !== TT_ACCESS && requestedType !== TT_REFRESH) {
      throw new InvalidRequest(`unsupported requested_token_type '${requestedType}'; supported: ${TT_ACCESS}, ${TT_REFRESH}`);
    }

    if (params.actor_token !== undefined && params.actor_token_type === undefined) {
      throw new InvalidRequest("'actor_token_type' is required when 'actor_token' is present");
    }
    if (params.actor_token === undefined && params.actor_token_type !== undefined) {
      throw new InvalidRequest("'actor_token_type' must not be sent without 'actor_token'");
    }

    const subject = await validateSubjectToken(subjectToken, subjectTokenType, 'subject_token');
    const account = await loadAccount(ctx, subject.accountId, 'subject_token');
    ctx.oidc.entity('Account', account);

    let act;
    if (params.actor_token !== undefined) {
      const actor = await validateAccessToken(params.actor_token, params.actor_token_type, 'actor_token');
      act = { sub: actor.accountId, client_id: actor.clientId };
    }

    // Scopes: narrow only (offline_access may be added).
    const subjectScopes = splitScope(subject.scope);
    const explicitScope = params.scope !== undefined && params.scope !== '';
    const requestedScopes = explicitScope ? splitScope(params.scope) : new Set(subjectScopes);
    const exceeding = [...requestedScopes].filter((s) => s !== 'offline_access' && !subjectScopes.has(s));
    if (exceeding.length) {
      throw new InvalidScope(
        `requested scope exceeds the subject token's scope: ${exceeding.join(' ')}`,
        exceeding.join(' '),
      );
    }

    // INDIGO IAM's answer shape: a refresh token only for offline_access in the scope, whatever
    // requested_token_type says, and issued_token_type always ...:jwt.
    const indigo = env.exchangeShape === 'indigo';
    const wantRefresh = indigo
      ? explicitScope && requestedScopes.has('offline_access')
      : requestedType === TT_REFRESH || (explicitScope && requestedScopes.has('offline_access'));
    if (wantRefresh) {
      requestedScopes.add('offline_access');
      if (!client.grantTypeAllowed('refresh_token')) {
        throw new InvalidRequest('a refresh token was requested but this client may not use the refresh_token grant');
      }
    } else {
      requestedScopes.delete('offline_access');
    }

    const targets = targetsFor(ctx, { allowAudience: true });
    const { grant, grantId } = await createGrant(client, account.accountId, requestedScopes, targets);
    ctx.oidc.entity('Grant', grant);
    const scope = [...requestedScopes].join(' ');
    const common = {
      client, accountId: account.accountId, grant, grantId, scopes: requestedScopes, targets, gty: GRANT_TOKEN_EXCHANGE,
    };

    if (wantRefresh && env.exchangeShape === 'strict') {
      const { value: rtValue } = await issueRefreshToken(ctx, common);
      ctx.body = {
        access_token: rtValue,
        issued_token_type: TT_REFRESH,
        token_type: 'N_A',
        scope,
      };
      return;
    }

    const { at, value: atValue } = await issueAccessToken(ctx, { ...common, act });
    const body = {
      access_token: atValue,
      issued_token_type: indigo ? TT_JWT : TT_ACCESS,
      token_type: at.tokenType,
      expires_in: at.expiration,
    };
    if (wantRefresh) {
      const { value: rtValue } = await issueRefreshToken(ctx, common);
      body.refresh_token = rtValue;
    }
    body.scope = scope;
    ctx.body = body;
  }

  provider.registerGrantType(
    GRANT_TOKEN_EXCHANGE,
    tokenExchangeHandler,
    [
      'subject_token', 'subject_token_type', 'requested_token_type', 'scope',
      'audience', 'resource', 'actor_token', 'actor_token_type',
    ],
    ['audience', 'resource'],
  );

  // -- test-only password grant ---------------------------------------------------------------

  function passwordMatches(expected, given) {
    const a = crypto.createHash('sha256').update(String(expected)).digest();
    const b = crypto.createHash('sha256').update(String(given)).digest();
    return crypto.timingSafeEqual(a, b);
  }

  async function passwordHandler(ctx) {
    const { client, params } = ctx.oidc;
    const username = required(params, 'username');
    const password = required(params, 'password');

    const user = Object.hasOwn(env.users, username) ? env.users[username] : undefined;
    if (!user || !passwordMatches(user.password, password)) {
      throw new InvalidGrant('invalid username or password');
    }

    const scopes = params.scope ? splitScope(params.scope) : new Set(['openid']);
    const unsupported = [...scopes].filter((s) => !env.supportedScopes.has(s));
    if (unsupported.length) {
      throw new InvalidScope(`unsupported scope: ${unsupported.join(' ')}`, unsupported.join(' '));
    }

    const account = await loadAccount(ctx, user.sub, 'user');
    ctx.oidc.entity('Account', account);
    const targets = targetsFor(ctx, { allowAudience: false });
    const { grant, grantId } = await createGrant(client, account.accountId, scopes, targets);
    ctx.oidc.entity('Grant', grant);
    const common = {
      client, accountId: account.accountId, grant, grantId, scopes, targets, gty: GRANT_PASSWORD,
    };

    const { at, value: atValue } = await issueAccessToken(ctx, { ...common, expiresIn: env.userAtTtl });
    const body = {
      access_token: atValue,
      token_type: at.tokenType,
      expires_in: at.expiration,
    };
    if (scopes.has('offline_access') && client.grantTypeAllowed('refresh_token')) {
      const { value: rtValue } = await issueRefreshToken(ctx, common);
      body.refresh_token = rtValue;
    }
    body.scope = [...scopes].join(' ');
    ctx.body = body;
  }

  provider.registerGrantType(GRANT_PASSWORD, passwordHandler, ['username', 'password', 'scope', 'resource'], ['resource']);
}
