// In-memory storage adapter for the test provider.
//
// node-oidc-provider ships a memory adapter, but it keeps at most 1000 entries in an LRU and
// silently evicts the oldest ones; a long test run or a demo could then lose a live grant or
// refresh token and fail in ways that have nothing to do with the code under test. This adapter
// implements the same interface (see node-oidc-provider's lib/adapters/memory_adapter.js) with
// plain Maps and no eviction. Entries are kept for a grace period after they expire, so that the
// provider (which checks "exp" itself) can say "expired" rather than "not found".

function nowMs() {
  return Date.now();
}

// One store per provider instance, shared by the per-model adapter objects.
export function createAdapterFactory({ clockTolerance = 0, graceSeconds = 600 } = {}) {
  const entries = new Map(); // key -> { payload, expiresAt }
  const grants = new Map(); // grantId -> Set of keys
  const sessionUids = new Map(); // uid -> id
  const userCodes = new Map(); // userCode -> id

  function live(key) {
    const entry = entries.get(key);
    if (!entry) return undefined;
    if (entry.expiresAt !== undefined && entry.expiresAt <= nowMs()) {
      entries.delete(key);
      return undefined;
    }
    return entry.payload;
  }

  function sweep() {
    const now = nowMs();
    for (const [key, entry] of entries) {
      if (entry.expiresAt !== undefined && entry.expiresAt <= now) {
        entries.delete(key);
      }
    }
    for (const [grantId, keys] of grants) {
      for (const key of keys) {
        if (!entries.has(key)) keys.delete(key);
      }
      if (keys.size === 0) grants.delete(grantId);
    }
  }

  const timer = setInterval(sweep, 30_000);
  timer.unref();

  class TestAdapter {
    constructor(model) {
      this.model = model;
    }

    key(id) {
      return `${this.model}:${id}`;
    }

    async upsert(id, payload, expiresIn) {
      const key = this.key(id);
      const expiresAt = typeof expiresIn === 'number'
        ? nowMs() + (expiresIn + clockTolerance + graceSeconds) * 1000
        : undefined;
      entries.set(key, { payload, expiresAt });
      if (payload.grantId) {
        if (!grants.has(payload.grantId)) grants.set(payload.grantId, new Set());
        grants.get(payload.grantId).add(key);
      }
      if (this.model === 'Session' && payload.uid) sessionUids.set(payload.uid, id);
      if (payload.userCode) userCodes.set(payload.userCode, id);
    }

    async find(id) {
      if (id === undefined) return undefined;
      return live(this.key(id));
    }

    async findByUid(uid) {
      return this.find(sessionUids.get(uid));
    }

    async findByUserCode(userCode) {
      return this.find(userCodes.get(userCode));
    }

    async consume(id) {
      const payload = live(this.key(id));
      if (payload) payload.consumed = Math.floor(nowMs() / 1000);
    }

    async destroy(id) {
      const key = this.key(id);
      const payload = live(key);
      entries.delete(key);
      if (payload?.grantId) grants.get(payload.grantId)?.delete(key);
    }

    async revokeByGrantId(grantId) {
      // Like node-oidc-provider's own memory adapter: every token stored for the grant goes,
      // whichever model the call came through.
      const keys = grants.get(grantId);
      if (!keys) return;
      for (const key of keys) entries.delete(key);
      grants.delete(grantId);
    }
  }

  return TestAdapter;
}
