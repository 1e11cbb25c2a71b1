// Test OpenID provider for the oidc.tokens collection: a real node-oidc-provider with RFC 8693
// token exchange and a test-only password grant added through registerGrantType().
//
//   node server.mjs [--port 0] [--host 127.0.0.1] [--issuer-host HOST | --issuer URL]
//                   [--tls-cert FILE --tls-key FILE]
//                   [--access-token-format opaque|jwt] [--at-ttl SECONDS] [--rt-ttl SECONDS]
//                   [--user-at-ttl SECONDS]
//                   [--exchange-shape common|strict|indigo] [--discovery openid|oauth]
//                   [--device-code-ttl SECONDS] [--device-interval SECONDS] [--device-slow-down N]
//                   [--config config.json] [--exit-on-stdin-close]
//
// The device flow (RFC 8628) is on: node-oidc-provider's user-code pages, then this server's own login and
// consent pages (interactions.mjs). node-oidc-provider neither announces a polling interval nor answers
// slow_down, so this server does both: the device authorization answer carries `interval`
// (--device-interval, 5 by default), a poll sooner than the interval after the previous one is answered slow_down
// and the interval grows by 5 seconds (RFC 8628 section 3.5), and --device-slow-down N answers the first N polls
// of every device code with slow_down whatever their timing. /_test/stats lists every device code's polls.
//
// When it listens it prints exactly one line to stdout: READY {"issuer": ..., "port": ..., ...}.
// Everything else goes to stderr. SIGTERM / SIGINT stop it.

// Keep stdout for the READY line only: node-oidc-provider prints notices with console.info.
console.log = console.error;
console.info = console.error;

const { parseArgs } = await import('node:util');
const fs = await import('node:fs');
const http = await import('node:http');
const https = await import('node:https');
const crypto = await import('node:crypto');
const path = await import('node:path');
const { fileURLToPath } = await import('node:url');

const HERE = path.dirname(fileURLToPath(import.meta.url));

function fail(message) {
  process.stderr.write(`test-provider: ${message}\n`);
  process.exit(2);
}

let args;
try {
  ({ values: args } = parseArgs({
    options: {
      port: { type: 'string', default: '0' },
      host: { type: 'string', default: '127.0.0.1' },
      'issuer-host': { type: 'string' },
      issuer: { type: 'string' },
      'tls-cert': { type: 'string' },
      'tls-key': { type: 'string' },
      'access-token-format': { type: 'string', default: 'opaque' },
      'at-ttl': { type: 'string', default: '60' },
      'rt-ttl': { type: 'string', default: '3600' },
      'user-at-ttl': { type: 'string' },
      'exchange-shape': { type: 'string', default: 'common' },
      discovery: { type: 'string', default: 'openid' },
      'trusted-ci-issuer': { type: 'string', multiple: true, default: [] },
      'ci-audience': { type: 'string' },
      'ci-scope': { type: 'string', default: 'openid offline_access compute.read storage.read:/' },
      'ci-jti-max-uses': { type: 'string', default: '0' },
      'device-code-ttl': { type: 'string', default: '600' },
      'device-interval': { type: 'string', default: '5' },
      'device-slow-down': { type: 'string', default: '0' },
      config: { type: 'string', default: path.join(HERE, 'config.json') },
      'exit-on-stdin-close': { type: 'boolean', default: false },
      help: { type: 'boolean', default: false },
    },
    strict: true,
  }));
} catch (err) {
  fail(err.message);
}

if (args.help) {
  process.stderr.write(`usage: node server.mjs [--port N] [--host H] [--issuer-host H | --issuer URL] [--tls-cert F --tls-key F]
  [--access-token-format opaque|jwt] [--at-ttl S] [--rt-ttl S] [--user-at-ttl S] [--exchange-shape common|strict|indigo]
  [--discovery openid|oauth] [--trusted-ci-issuer ISSUER=JWKS_PATH --ci-audience AUD [--ci-scope S] [--ci-jti-max-uses N]]
  [--device-code-ttl S] [--device-interval S] [--device-slow-down N] [--config FILE] [--exit-on-stdin-close]\n`);
  process.exit(0);
}

function positiveInt(name) {
  const n = Number(args[name]);
  if (!Number.isInteger(n) || n < 1) fail(`--${name} must be a positive integer`);
  return n;
}

function oneOf(name, values) {
  if (!values.includes(args[name])) fail(`--${name} must be one of ${values.join(', ')}`);
  return args[name];
}

const port = Number(args.port);
if (!Number.isInteger(port) || port < 0 || port > 65535) fail('--port must be 0..65535');
const atTtl = positiveInt('at-ttl');
const rtTtl = positiveInt('rt-ttl');
// The user's own login (password grant) may outlive the exchanged tokens: a subject token
// must survive the way to the exchange while refreshes still come every few seconds.
const userAtTtl = args['user-at-ttl'] === undefined ? atTtl : positiveInt('user-at-ttl');
const accessTokenFormat = oneOf('access-token-format', ['opaque', 'jwt']);
const exchangeShape = oneOf('exchange-shape', ['common', 'strict', 'indigo']);
const discoveryMode = oneOf('discovery', ['openid', 'oauth']);
if (!!args['tls-cert'] !== !!args['tls-key']) fail('--tls-cert and --tls-key go together');
if (args.issuer && args['issuer-host']) fail('--issuer and --issuer-host are exclusive');
if (args.issuer) {
  let parsed;
  try {
    parsed = new URL(args.issuer);
  } catch {
    fail('--issuer must be an absolute URL');
  }
  if (!['http:', 'https:'].includes(parsed.protocol) || parsed.search || parsed.hash) {
    fail('--issuer must be an http(s) URL without query or fragment');
  }
}
const deviceCodeTtl = positiveInt('device-code-ttl');
const deviceInterval = positiveInt('device-interval');
const deviceSlowDown = Number(args['device-slow-down']);
if (!Number.isInteger(deviceSlowDown) || deviceSlowDown < 0) fail('--device-slow-down must be 0 or a positive integer');
const ciJtiMaxUses = Number(args['ci-jti-max-uses']);
if (!Number.isInteger(ciJtiMaxUses) || ciJtiMaxUses < 0) fail('--ci-jti-max-uses must be 0 (no limit) or a positive integer');
// Trusted CI issuers: ISSUER=JWKS_PATH, the issuer's public keys read once from a JWKS file.
const ciIssuers = new Map();
for (const entry of args['trusted-ci-issuer']) {
  const at = entry.lastIndexOf('=');
  if (at < 1) fail('--trusted-ci-issuer must be ISSUER=JWKS_PATH');
  const [ciIssuer, jwksPath] = [entry.slice(0, at), entry.slice(at + 1)];
  let jwks;
  try {
    jwks = JSON.parse(fs.readFileSync(jwksPath, 'utf8'));
  } catch (err) {
    fail(`cannot read the JWKS of the CI issuer ${ciIssuer}: ${err.message}`);
  }
  const keys = new Map();
  for (const jwk of jwks.keys || []) {
    if (!jwk.kid || (jwk.use && jwk.use !== 'sig')) continue;
    try {
      keys.set(jwk.kid, crypto.createPublicKey({ key: jwk, format: 'jwk' }));
    } catch (err) {
      fail(`the JWKS of the CI issuer ${ciIssuer} has an unusable key ${jwk.kid}: ${err.message}`);
    }
  }
  if (keys.size === 0) fail(`the JWKS of the CI issuer ${ciIssuer} has no signing key with a kid`);
  ciIssuers.set(ciIssuer, { keys });
}
if (ciIssuers.size > 0 && !args['ci-audience']) fail('--trusted-ci-issuer needs --ci-audience (the audience CI tokens must name)');
const tls = !!args['tls-cert'];
const host = args.host;
const issuerHost = args['issuer-host'] || host;

let config;
try {
  config = JSON.parse(fs.readFileSync(args.config, 'utf8'));
} catch (err) {
  fail(`cannot read --config ${args.config}: ${err.message}`);
}

const { default: Provider } = await import('oidc-provider');
const { createAdapterFactory } = await import('./adapter.mjs');
const { registerGrants } = await import('./grants.mjs');
const { interactionsMiddleware } = await import('./interactions.mjs');

// -- listen first, so that the issuer can carry the real port ------------------------------------

let handler = (req, res) => {
  res.statusCode = 503;
  res.end();
};
const server = tls
  ? https.createServer({
    cert: fs.readFileSync(args['tls-cert']),
    key: fs.readFileSync(args['tls-key']),
  }, (req, res) => handler(req, res))
  : http.createServer((req, res) => handler(req, res));

await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(port, host, resolve);
}).catch((err) => fail(`cannot listen on ${host}:${port}: ${err.message}`));

const realPort = server.address().port;
const scheme = tls ? 'https' : 'http';
const hostForUrl = (h) => (h.includes(':') ? `[${h}]` : h);
// --issuer: a complete issuer identifier (e.g. the address of a proxy in front of this server);
// otherwise scheme://ISSUER-HOST:PORT.
const issuer = args.issuer ? args.issuer : `${scheme}://${hostForUrl(issuerHost)}:${realPort}`;
const url = `${scheme}://${hostForUrl(host)}:${realPort}`;

// -- accounts -------------------------------------------------------------------------------------

const users = config.users || {};
const accountsBySub = new Map(Object.entries(users).map(([username, u]) => [u.sub, { username, ...u }]));

// Subjects of CI tokens exchanged so far (grants.mjs): accounts of their own, with the CI claims.
const ciSubjects = new Map();

async function findAccount(ctx, id) {
  const ci = !accountsBySub.has(id) && ciSubjects.get(id);
  if (ci) {
    return {
      accountId: id,
      async claims() {
        return { sub: id, ci_issuer: ci.issuer, preferred_username: ci.claims.user_login || id };
      },
    };
  }
  const user = accountsBySub.get(id);
  if (!user) return undefined;
  return {
    accountId: id,
    async claims() {
      return {
        sub: id,
        name: user.name,
        preferred_username: user.username,
        email: user.email,
        email_verified: true,
      };
    },
  };
}

// -- keys -----------------------------------------------------------------------------------------

const { privateKey, publicKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
const kid = crypto.randomBytes(8).toString('hex');
const signingJwk = { ...privateKey.export({ format: 'jwk' }), kid, alg: 'RS256', use: 'sig' };
const signingKeys = new Map([[kid, publicKey]]);

// -- resource servers (RFC 8707) ------------------------------------------------------------------

const supportedScopes = new Set(config.scopes || ['openid', 'offline_access']);
// WLCG's "any" audience: the default target of JWT access tokens when none is requested.
const DEFAULT_RESOURCE = 'https://wlcg.cern.ch/jwt/v1/any';

function resourceServerInfo() {
  return {
    scope: [...supportedScopes].join(' '),
    accessTokenTTL: atTtl,
    accessTokenFormat,
    ...(accessTokenFormat === 'jwt' ? { jwt: { sign: { alg: 'RS256' } } } : {}),
  };
}

// JWT access tokens are not stored by node-oidc-provider; remember which grant each came from so
// the token exchange can refuse a JWT subject token whose grant was revoked.
const jwtAccessTokens = new Map();
const jwtSweep = setInterval(() => {
  const limit = Date.now() - (Math.max(atTtl, userAtTtl) + 60) * 1000;
  for (const [jti, entry] of jwtAccessTokens) {
    if (entry.seen < limit) jwtAccessTokens.delete(jti);
  }
}, 30_000);
jwtSweep.unref();

// -- the provider ---------------------------------------------------------------------------------

const clients = (config.clients || []).map((c) => ({
  response_types: [],
  redirect_uris: [],
  ...c,
}));

const provider = new Provider(issuer, {
  adapter: createAdapterFactory({ clockTolerance: 0 }),
  clients,
  findAccount,
  jwks: { keys: [signingJwk] },
  scopes: [...supportedScopes],
  claims: {
    openid: ['sub'],
    profile: ['name', 'preferred_username'],
    email: ['email', 'email_verified'],
  },
  cookies: { keys: [crypto.randomBytes(32).toString('hex')] },
  clockTolerance: 0,
  features: {
    devInteractions: { enabled: false },
    // RFC 8628; the user logs in on interactions.mjs's pages.
    deviceFlow: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
    userinfo: { enabled: true },
    resourceIndicators: {
      enabled: true,
      // JWT mode: every token gets an audience (RFC 9068 needs one), WLCG's "any" by default.
      defaultResource: async (ctx, client, oneOf) => {
        if (oneOf) return oneOf[0];
        return accessTokenFormat === 'jwt' ? DEFAULT_RESOURCE : undefined;
      },
      // A test provider: any absolute URI (or RFC 8693 audience name) is a resource server that
      // may receive every supported scope.
      getResourceServerInfo: async () => resourceServerInfo(),
      // On refresh, reuse the audience recorded on the refresh token without it being re-sent.
      useGrantedResource: async () => true,
    },
  },
  rotateRefreshToken: true,
  ttl: {
    AccessToken: atTtl,
    RefreshToken: rtTtl,
    Grant: Math.max(rtTtl * 10, 14 * 24 * 60 * 60),
    IdToken: 3600,
    Session: 3600,
    Interaction: 600,
    DeviceCode: deviceCodeTtl,
  },
  interactions: {
    url: async (ctx, interaction) => `/interaction/${interaction.uid}`,
  },
  extraTokenClaims: async (ctx, token) => {
    if (ctx?.oidcTestActClaim && token.kind === 'AccessToken') {
      return { act: ctx.oidcTestActClaim };
    }
    return undefined;
  },
  renderError: async (ctx, out) => {
    ctx.type = 'json';
    ctx.body = out;
  },
});

provider.on('access_token.issued', (token) => {
  // "issued" (not "saved") is what a JWT access token emits.
  jwtAccessTokens.set(token.jti, { grantId: token.grantId, seen: Date.now() });
});
// Why userinfo refused a token: its answer's description is generic ("invalid token provided").
provider.on('userinfo.error', (ctx, err) => {
  process.stderr.write(`test-provider: userinfo refused the token: ${err.error_detail || err.message}\n`);
});
provider.on('server_error', (ctx, err) => {
  process.stderr.write(`test-provider: server_error ${ctx.method} ${ctx.path}: ${err.stack || err}\n`);
});

registerGrants(provider, {
  users,
  findAccount,
  supportedScopes,
  exchangeShape,
  defaultResource: accessTokenFormat === 'jwt' ? DEFAULT_RESOURCE : undefined,
  resourceServerInfo,
  userAtTtl,
  signingKeys,
  jwtAccessTokens,
  ciIssuers,
  ciAudience: args['ci-audience'],
  ciScopes: new Set(args['ci-scope'].split(' ').filter(Boolean)),
  ciJtiMaxUses,
  ciSubjects,
});

// -- test-only statistics, discovery switch, error-code fix-up ------------------------------------

function emptyStats() {
  return {
    token: {},
    revocation: { requests: 0, succeeded: 0, failed: 0 },
    introspection: { requests: 0, succeeded: 0, failed: 0, active: 0 },
    discovery: { requests: 0, not_found: 0 },
    jwks: { requests: 0 },
    // user_code -> {device_code, client_id, issued_at, interval (now), polls: [{at, answer, forced}]}; times in ms
    device: {},
  };
}
let stats = emptyStats();

function sendJson(ctx, status, body) {
  ctx.status = status;
  ctx.type = 'application/json';
  ctx.set('Cache-Control', 'no-store');
  ctx.body = body;
}

const OIDC_DISCOVERY = '/.well-known/openid-configuration';
const OAUTH_DISCOVERY = '/.well-known/oauth-authorization-server';

// node-oidc-provider 9 lets a client registered for client_secret_basic authenticate with
// client_secret_post and vice versa. Strict providers (and RFC 7591's token_endpoint_auth_method)
// do not: refuse the method a client is not registered for, like such a provider would.
const registeredAuthMethod = new Map(clients.map((c) => [c.client_id, c.token_endpoint_auth_method || 'client_secret_basic']));
const CLIENT_AUTH_PATHS = new Set(['/token', '/token/introspection', '/token/revocation']);
const BODY_LIMIT = 56 * 1024;

async function readRawBody(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > BODY_LIMIT) throw new Error('request body too large');
    chunks.push(chunk);
  }
  return Buffer.concat(chunks, size);
}

function decodeBasicPart(value) {
  try {
    return decodeURIComponent(value.replace(/\+/g, '%20'));
  } catch {
    return undefined;
  }
}

function refuseClientAuth(ctx, viaHeader) {
  if (viaHeader) {
    ctx.set('WWW-Authenticate', `Basic realm="${provider.issuer}", error="invalid_client"`);
  }
  sendJson(ctx, 401, { error: 'invalid_client', error_description: 'client authentication failed' });
}

// Returns { refused, grantType } (grantType when the form was read here).
async function enforceRegisteredAuthMethod(ctx) {
  if (ctx.method !== 'POST' || !CLIENT_AUTH_PATHS.has(ctx.path)) return { refused: false };
  const authorization = ctx.headers.authorization;
  if (authorization !== undefined) {
    const [scheme, value] = authorization.split(' ');
    if (scheme?.toLowerCase() !== 'basic' || !value) return { refused: false };
    const decoded = Buffer.from(value, 'base64').toString('utf8');
    const colon = decoded.indexOf(':');
    const clientId = colon === -1 ? undefined : decodeBasicPart(decoded.slice(0, colon));
    if (registeredAuthMethod.get(clientId) === 'client_secret_post') {
      refuseClientAuth(ctx, true);
      return { refused: true };
    }
    return { refused: false };
  }
  if (!ctx.is('application/x-www-form-urlencoded')) return { refused: false };
  let raw;
  try {
    raw = await readRawBody(ctx.req);
  } catch (err) {
    sendJson(ctx, 400, { error: 'invalid_request', error_description: err.message });
    return { refused: true };
  }
  // node-oidc-provider parses an already-read body from req.body.
  ctx.req.body = raw;
  const form = new URLSearchParams(raw.toString('utf8'));
  if (form.has('client_secret') && registeredAuthMethod.get(form.get('client_id')) === 'client_secret_basic') {
    refuseClientAuth(ctx, false);
    return { refused: true, grantType: form.get('grant_type') || undefined };
  }
  return { refused: false };
}

// -- device flow: the polling interval and slow_down (RFC 8628 section 3.5) ---------------------------

const DEVICE_CODE_GRANT = 'urn:ietf:params:oauth:grant-type:device_code';
// A poll up to this much sooner than the interval still counts as on time (timers and the network jitter).
const POLL_TOLERANCE_MS = 250;
const deviceCodes = new Map(); // device_code -> its entry in stats.device

function recordDeviceAuthorization(ctx) {
  const body = ctx.body;
  if (ctx.status !== 200 || !body || typeof body.device_code !== 'string') return;
  body.interval = deviceInterval;
  const entry = {
    device_code: body.device_code,
    client_id: ctx.oidc?.client?.clientId,
    issued_at: Date.now(),
    expires_in: body.expires_in,
    interval: deviceInterval,
    forced_left: deviceSlowDown,
    polls: [],
  };
  stats.device[body.user_code] = entry;
  deviceCodes.set(body.device_code, entry);
}

// The form of a POST /token, read once (node-oidc-provider parses an already-read body from req.body).
async function tokenForm(ctx) {
  if (ctx.method !== 'POST' || ctx.path !== '/token' || !ctx.is('application/x-www-form-urlencoded')) return undefined;
  if (ctx.req.body === undefined) ctx.req.body = await readRawBody(ctx.req);
  return new URLSearchParams(ctx.req.body.toString('utf8'));
}

// Answers slow_down itself (returns true) when the poll is forced to slow down or came too soon;
// otherwise records the poll and returns it, for its answer to be filled in after node-oidc-provider's.
async function gateDevicePoll(ctx) {
  let form;
  try {
    form = await tokenForm(ctx);
  } catch (err) {
    sendJson(ctx, 400, { error: 'invalid_request', error_description: err.message });
    return { answered: true };
  }
  const entry = form?.get('grant_type') === DEVICE_CODE_GRANT && deviceCodes.get(form.get('device_code'));
  if (!entry) return { answered: false };
  const now = Date.now();
  const last = entry.polls.length ? entry.polls[entry.polls.length - 1].at : entry.issued_at;
  const poll = { at: now, since_last_ms: now - last, answer: undefined, forced: false };
  entry.polls.push(poll);
  const forced = entry.forced_left > 0;
  // RFC 8628 asks for the interval between polls; the first poll may come at once.
  const early = entry.polls.length > 1 && now - last < entry.interval * 1000 - POLL_TOLERANCE_MS;
  if (forced || early) {
    if (forced) entry.forced_left -= 1;
    entry.interval += 5;
    Object.assign(poll, { answer: 'slow_down', forced });
    sendJson(ctx, 400, {
      error: 'slow_down',
      error_description: `poll at most every ${entry.interval} seconds`,
    });
    return { answered: true };
  }
  return { answered: false, poll };
}

const ROUTE_BY_PATH = {
  '/token': 'token',
  '/token/introspection': 'introspection',
  '/token/revocation': 'revocation',
};

function count(route, { ok, body = {}, grantType }) {
  switch (route) {
    case 'token': {
      const gt = grantType || '(unknown)';
      stats.token[gt] ||= { requests: 0, succeeded: 0, failed: 0, errors: {} };
      const s = stats.token[gt];
      s.requests += 1;
      if (ok) {
        s.succeeded += 1;
      } else {
        s.failed += 1;
        const code = body.error || 'http_error';
        s.errors[code] = (s.errors[code] || 0) + 1;
      }
      break;
    }
    case 'revocation':
      stats.revocation.requests += 1;
      stats.revocation[ok ? 'succeeded' : 'failed'] += 1;
      break;
    case 'introspection':
      stats.introspection.requests += 1;
      stats.introspection[ok ? 'succeeded' : 'failed'] += 1;
      if (ok && body.active === true) stats.introspection.active += 1;
      break;
    case 'discovery':
      stats.discovery.requests += 1;
      if (!ok) stats.discovery.not_found += 1;
      break;
    case 'jwks':
      stats.jwks.requests += 1;
      break;
    default:
  }
}

function log(ctx, route, grantType) {
  const body = ctx.body && typeof ctx.body === 'object' ? ctx.body : {};
  process.stderr.write(`test-provider: ${ctx.method} ${ctx.path} ${ctx.status}${
    route === 'token' ? ` grant_type=${grantType}` : ''}${
    body.error ? ` error=${body.error} (${body.error_description || ''})` : ''}\n`);
}

provider.use(async (ctx, next) => {
  // test-only endpoints
  if (ctx.path === '/_test/stats') {
    if (ctx.method !== 'GET') return sendJson(ctx, 405, { error: 'method_not_allowed' });
    return sendJson(ctx, 200, stats);
  }
  if (ctx.path === '/_test/reset-stats') {
    if (ctx.method !== 'POST') return sendJson(ctx, 405, { error: 'method_not_allowed' });
    stats = emptyStats();
    return sendJson(ctx, 200, stats);
  }

  // node-oidc-provider 9 answers both discovery locations. --discovery picks one:
  // openid -> only /.well-known/openid-configuration, oauth -> only the RFC 8414 location.
  const hidden = discoveryMode === 'oauth' ? OIDC_DISCOVERY : OAUTH_DISCOVERY;
  if (ctx.method === 'GET' && ctx.path === hidden) {
    sendJson(ctx, 404, {
      error: 'not_found',
      error_description: `this provider publishes its metadata at ${discoveryMode === 'oauth' ? OAUTH_DISCOVERY : OIDC_DISCOVERY} only`,
    });
    count('discovery', { ok: false });
    log(ctx, 'discovery');
    return undefined;
  }

  const enforced = await enforceRegisteredAuthMethod(ctx);
  if (enforced.refused) {
    const route = ROUTE_BY_PATH[ctx.path];
    count(route, { ok: false, body: ctx.body, grantType: enforced.grantType });
    log(ctx, route, enforced.grantType);
    return undefined;
  }

  const devicePoll = await gateDevicePoll(ctx);
  if (devicePoll.answered) {
    count('token', { ok: false, body: ctx.body, grantType: DEVICE_CODE_GRANT });
    log(ctx, 'token', DEVICE_CODE_GRANT);
    return undefined;
  }

  await next();

  if (ctx.oidc?.route === 'device_authorization') recordDeviceAuthorization(ctx);
  if (devicePoll.poll) {
    const answer = ctx.body && typeof ctx.body === 'object' ? ctx.body : {};
    devicePoll.poll.answer = answer.error || (ctx.status === 200 ? 'tokens' : `http_${ctx.status}`);
  }

  const route = ctx.oidc?.route;
  const ok = ctx.status >= 200 && ctx.status < 300;
  const body = ctx.body && typeof ctx.body === 'object' ? ctx.body : {};
  const grantType = ctx.oidc?.params?.grant_type;
  // node-oidc-provider (since v8.5) answers a client using a grant type it is not registered for
  // with invalid_request; RFC 6749 section 5.2 names unauthorized_client for that.
  if (route === 'token' && ctx.status === 400 && body.error === 'invalid_request'
    && body.error_description === 'requested grant type is not allowed for this client') {
    body.error = 'unauthorized_client';
  }
  count(route, { ok, body, grantType });
  log(ctx, route, grantType);
  return undefined;
});

provider.use(interactionsMiddleware(provider, users));

handler = provider.callback();

// -- lifecycle ------------------------------------------------------------------------------------

let stopping = false;
function stop(reason) {
  if (stopping) return;
  stopping = true;
  process.stderr.write(`test-provider: stopping (${reason})\n`);
  server.close(() => process.exit(0));
  server.closeAllConnections?.();
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', () => stop('SIGTERM'));
process.on('SIGINT', () => stop('SIGINT'));
if (args['exit-on-stdin-close']) {
  process.stdin.on('data', () => {});
  process.stdin.on('end', () => stop('stdin closed'));
  process.stdin.on('error', () => stop('stdin error'));
  process.stdin.resume();
}

const ready = {
  issuer,
  port: realPort,
  url,
  pid: process.pid,
  tls,
  access_token_format: accessTokenFormat,
  exchange_shape: exchangeShape,
  discovery: discoveryMode,
  at_ttl: atTtl,
  rt_ttl: rtTtl,
  user_at_ttl: userAtTtl,
  device_code_ttl: deviceCodeTtl,
  device_interval: deviceInterval,
  device_slow_down: deviceSlowDown,
  trusted_ci_issuers: [...ciIssuers.keys()],
  ci_audience: args['ci-audience'] || null,
  oidc_provider_version: JSON.parse(fs.readFileSync(path.join(HERE, 'node_modules', 'oidc-provider', 'package.json'), 'utf8')).version,
};
process.stderr.write(`test-provider: listening on ${url}, issuer ${issuer}\n`);
process.stdout.write(`READY ${JSON.stringify(ready)}\n`);
