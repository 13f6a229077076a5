package ledger

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// RedisAdmitter is an Admitter on the Redis that holds a RedisStore's
// ledger, shared by every gateway: each decision is one atomic Lua script
// whose clock is the server's TIME, so the limits are exact across any
// number of processes and no gateway's clock matters. It is safe for
// concurrent use.
//
// Key layout, for prefix P (all a key's state carries its {keyID} hash tag,
// like the RedisStore's usage hashes the quota check reads):
//
//	P:{<keyID>}:rl:tat       key RPS: GCRA theoretical arrival time (µs)
//	P:{<keyID>}:rl:rpm       zset of the admissions of the last 60 s, by time (µs)
//	P:{<keyID>}:rl:leases    zset of concurrency leases, by expiry (µs)
//	P:{<keyID>}:rl:resv      hash request id → reserved tokens
//	P:{<keyID>}:rl:resvexp   zset request id → reservation expiry (µs)
//	P:{<keyID>}:rl:resvsum   the sum of rl:resv's tokens
//	P:{<keyID>}:rl:tpm       hash unix second → tokens applied (event time)
//	P:{<keyID>}:rl:tpmsum    hash: s, the sum of rl:tpm's tokens, and lo, its
//	                         oldest second (absent = read rl:tpm whole)
//	P:{<keyID>}:rl:cancel:<request id>
//	                         marker of an admission cancelled after its call
//	                         failed (see canceller): the admission refuses
//	                         itself should it run after all
//	P:global:rl:tat          global RPS: GCRA theoretical arrival time (µs)
//
// The global bucket cannot share a slot with every key. On a single node
// (any client but *redis.ClusterClient) the script reads and writes it with
// the key's state, so one script decides everything. On Redis Cluster the
// key's script and a global script go in one pipeline (one round trip); when
// only one of them admits, a compensating script undoes what it recorded (a
// second round trip on that path only), so a rejected request still leaves
// no trace.
//
// The period quota reads P:{<keyID>}:usage:<periodID>, the hash RedisStore
// Apply fills; the period id comes from the request's arrival time
// (AdmitRequest.At) on this process's clock, as the entries' times (and so
// their periods) do. Reservations are released by Apply, which
// also counts each applied entry's tokens in the TPM window at the entry's
// time.
//
// Concurrent admissions and releases share round trips: a call that finds
// none of this admitter's pipelines in flight is sent at once, and calls
// that arrive meanwhile go together in the next pipeline (see combiner).
//
// A call that fails without an answer may still run when Redis gets it. So
// an Admit that returns an error is followed, in the background, by the
// cancellation of its admission, and a Release that returns an error by
// the release again, each sent until Redis answers (see canceller): once
// Redis answers again, a failed admission holds no lease, no reservation
// and no place in the RPM window, whichever of it and its cancellation
// runs first, and a failed release's lease is freed.
type RedisAdmitter struct {
	rdb     redis.UniversalClient
	prefix  string
	split   bool
	resvTTL time.Duration

	// The decisions' scripts, and their undoing, are sent without
	// go-redis's retries (oneShot); renewScript, idempotent, with them.
	admitScript, globalScript, undoScript oneShot
	renewScript                           *redis.Script

	// batch carries the admissions (outside the Redis Cluster split path)
	// and releases of concurrent requests in shared pipelines.
	batch *combiner
	// cancels follows up failed admissions and releases.
	cancels      *canceller
	cancelScript *redis.Script

	// now overrides the server's TIME; only tests set it.
	now func() time.Time
}

// NewRedisAdmitter returns an admitter on rdb for the keys of a RedisStore
// with the same prefix. The caller owns rdb.
func NewRedisAdmitter(rdb redis.UniversalClient, prefix string, opts ...Option) *RedisAdmitter {
	_, cluster := rdb.(*redis.ClusterClient)
	batch := &combiner{rdb: rdb, wait: newOptions(opts).replicaWait(rdb, prefix)}
	return &RedisAdmitter{
		rdb:          rdb,
		prefix:       prefix,
		split:        cluster,
		resvTTL:      DefaultReservationTTL,
		admitScript:  newOneShot(admitLua),
		globalScript: newOneShot(globalLua),
		undoScript:   newOneShot(undoLua),
		renewScript:  redis.NewScript(renewLua),
		cancelScript: redis.NewScript(cancelLua),
		batch:        batch,
		cancels:      newCanceller(batch),
	}
}

// luaClock is the clock prologue of the admission scripts: ARGV[1] is "0"
// for the server's TIME, or a time in µs (tests only).
const luaClock = `
local now
if ARGV[1] ~= '0' then
  now = tonumber(ARGV[1])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local function fmt(x) return string.format('%d', x) end
local function gcra(key, T, burst)
  local tat = tonumber(redis.call('GET', key) or now)
  if tat < now then tat = now end
  local newtat = tat + T
  local diff = now - (newtat - burst * T)
  if diff < 0 then return false, tat, 0, -diff, tat - now end
  return true, newtat, math.floor(diff / T), 0, newtat - now
end
local function settat(key, tat)
  redis.call('SET', key, fmt(tat), 'PX', fmt(math.floor((tat - now) / 1000) + 1))
end
`

// admitLua decides one request of one key and, when it is admitted, records
// it; see RedisAdmitter for KEYS[1..7] (tat, rpm, leases, resv, resvexp, tpm,
// usage), KEYS[8] is the RedisStore's reservation counter, KEYS[9] the sum
// of the reservations, KEYS[10] the TPM window's sum, KEYS[11] the
// request's cancel marker and KEYS[12], when present, the global bucket.
// A request whose marker is set was cancelled (cancelLua) after its call
// failed: it is refused with reason "cancelled" and changes nothing. ARGV after the clock: lease id, global
// interval (µs, 0 = none) and burst, key interval (µs, 0 = none) and burst,
// rpm, tpm, max concurrent, quota, reserve, lease TTL (µs), reservation TTL
// (µs), period end (µs, 0 = never), and, "1" when the call is sent a second
// time after its connection closed without an answer (see execQueued),
// again: a request that holds a lease, a place in the RPM window or a
// reservation was admitted by the first sending, and is admitted again
// without counting twice (a first sending that admitted it with none of
// those limits on took its places in the RPS buckets, which it takes again).
// It returns allowed (0/1), reason, retry after (µs), limit, remaining and
// reset (µs) of requests, the same of tokens, and whether only outstanding
// reservations made the quota refuse (0/1, Decision.HeldByReservations).
const admitLua = luaClock + `
if redis.call('EXISTS', KEYS[11]) == 1 then
  return {0, 'cancelled', '0', 0, 0, '0', 0, 0, '0', 0}
end
local lease = ARGV[2]
if ARGV[15] == '1' and (redis.call('ZSCORE', KEYS[3], lease) or redis.call('ZSCORE', KEYS[2], lease) or redis.call('HEXISTS', KEYS[4], lease) == 1) then
  return {1, '', '0', 0, 0, '0', 0, 0, '0', 0}
end
local gT, gburst = tonumber(ARGV[3]), tonumber(ARGV[4])
local kT, kburst = tonumber(ARGV[5]), tonumber(ARGV[6])
local rpm, tpm, maxc = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local quota, reserve = tonumber(ARGV[10]), tonumber(ARGV[11])
local leasettl, resvttl, pend = tonumber(ARGV[12]), tonumber(ARGV[13]), tonumber(ARGV[14])
local WIN = 60000000

local allowed, reason, retry, held = true, '', 0, 0
local function reject(r, after)
  if allowed then allowed, reason, retry = false, r, after end
end
local function fits(used, outstanding, limit)
  if reserve > limit then return outstanding == 0 and used < limit end
  return used + outstanding + reserve <= limit
end
local limreq, remreq, resetreq, limtok, remtok, resettok = 0, 0, 0, 0, 0, 0

local gtat
if gT > 0 and #KEYS >= 12 then
  local ok, t, _, after = gcra(KEYS[12], gT, gburst)
  if not ok then reject('global_rps', after) end
  gtat = t
end

local ktat
if kT > 0 then
  local ok, t, rem, after, reset = gcra(KEYS[1], kT, kburst)
  if not ok then reject('key_rps', after) end
  ktat = t
  if rpm <= 0 then limreq, remreq, resetreq = kburst, rem, reset end
end

if rpm > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', fmt(now - WIN))
  local n = redis.call('ZCARD', KEYS[2])
  local reset = WIN
  if n > 0 then
    local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
    reset = tonumber(first[2]) + WIN - now
  end
  if n >= rpm then
    -- The window holds more than the limit when the limit was lowered:
    -- a slot frees when all but rpm - 1 have left.
    if n > rpm then
      local r = redis.call('ZRANGE', KEYS[2], n - rpm, n - rpm, 'WITHSCORES')
      reset = tonumber(r[2]) + WIN - now
    end
    reject('key_rpm', reset)
  end
  limreq, remreq, resetreq = rpm, math.max(rpm - n, 0), reset
end

local leases = 0
if maxc > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', fmt(now))
  local n = redis.call('ZCARD', KEYS[3])
  leases = n
  if n >= maxc and not redis.call('ZSCORE', KEYS[3], lease) then
    local first = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
    reject('concurrency', math.min(tonumber(first[2]) - now, 1000000))
  end
end

local prev = 0
if tpm > 0 or quota > 0 then
  local expired = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', fmt(now))
  if #expired > 0 then
    local gone = 0
    for _, id in ipairs(expired) do
      gone = gone + tonumber(redis.call('HGET', KEYS[4], id) or '0')
      redis.call('HDEL', KEYS[4], id)
    end
    redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', fmt(now))
    if redis.call('DECRBY', KEYS[9], fmt(gone)) <= 0 then redis.call('DEL', KEYS[9]) end
  end
  prev = tonumber(redis.call('HGET', KEYS[4], lease) or '0')
  local r = redis.call('MGET', KEYS[8], KEYS[9])
  local outstanding = math.max(tonumber(r[1] or '0'), 0) + math.max(tonumber(r[2] or '0'), 0) - prev

  if tpm > 0 then
    -- KEYS[10] keeps the window's sum (s) and its oldest second (lo), so
    -- the window is read whole only when its oldest second has left it
    -- (at most once a second) or when a rejection needs its seconds.
    local oldest = math.floor(now / 1000000) - 60
    local m = redis.call('HMGET', KEYS[10], 's', 'lo')
    local used, lo = tonumber(m[1]), tonumber(m[2])
    local bysec
    local function scan()
      local f = redis.call('HGETALL', KEYS[6])
      local secs, sum, gone = {}, 0, {}
      bysec = {}
      for i = 1, #f, 2 do
        local s = tonumber(f[i])
        if s <= oldest then
          gone[#gone + 1] = f[i]
        else
          local v = tonumber(f[i + 1])
          sum = sum + v
          if not bysec[s] then secs[#secs + 1] = s end
          bysec[s] = (bysec[s] or 0) + v
        end
      end
      if #gone > 0 then redis.call('HDEL', KEYS[6], unpack(gone)) end
      table.sort(secs)
      return secs, sum
    end
    local secs
    if not used or not lo or lo <= oldest then
      secs, used = scan()
      lo = secs[1]
      if lo then
        redis.call('HSET', KEYS[10], 's', fmt(used), 'lo', fmt(lo))
        redis.call('EXPIRE', KEYS[10], 120)
      elseif m[1] or m[2] then
        redis.call('DEL', KEYS[10])
      end
    end
    if not fits(used, outstanding, tpm) then
      if not secs then secs = scan() end
      -- excess: the window's tokens that must leave it (see excess in
      -- admit.go); more than it holds when reservations must settle first.
      local excess = used + outstanding + reserve - tpm
      if reserve > tpm then
        excess = used - tpm + 1
        if outstanding > 0 then excess = used + 1 end
      end
      local freed, after = 0, 1000000
      for _, s in ipairs(secs) do
        freed = freed + bysec[s]
        if freed >= excess then
          after = (s + 60) * 1000000 - now
          break
        end
      end
      reject('tpm', after)
    end
    limtok, remtok = tpm, math.max(tpm - used - outstanding, 0)
    if lo then resettok = (lo + 60) * 1000000 - now end
  end

  if quota > 0 then
    local u = redis.call('HMGET', KEYS[7], 'p', 'c')
    local used = tonumber(u[1] or '0') + tonumber(u[2] or '0')
    local after = 0
    -- A request that arrived in a period that has ended since may retry
    -- at once: its retry is in the next period.
    if pend > 0 then after = math.max(pend - now, 1) end
    if not fits(used, outstanding, quota) then
      -- Held only by the reservations of requests in flight: it fits
      -- once they settle, so the client polls rather than waits for the
      -- period's end.
      if allowed and outstanding > 0 and fits(used, 0, quota) then
        held = 1
        reject('quota', 1000000)
      end
      reject('quota', after)
    end
    if tpm <= 0 then limtok, remtok, resettok = quota, math.max(quota - used - outstanding, 0), after end
  end
end

if not allowed then
  return {0, reason, fmt(retry), limreq, remreq, fmt(resetreq), limtok, remtok, fmt(resettok), held}
end

if gtat then settat(KEYS[12], gtat) end
if ktat then settat(KEYS[1], ktat) end
if rpm > 0 then
  redis.call('ZADD', KEYS[2], fmt(now), lease)
  redis.call('PEXPIRE', KEYS[2], 61000)
  remreq = math.max(remreq - 1, 0)
end
if maxc > 0 then
  redis.call('ZADD', KEYS[3], fmt(now + leasettl), lease)
  -- The set lives as long as its last lease: a set that had leases has a
  -- TTL (every write sets one), which only grows.
  local ttl = fmt(math.floor(leasettl / 1000) + 1000)
  if leases > 0 then
    redis.call('PEXPIRE', KEYS[3], ttl, 'GT')
  else
    redis.call('PEXPIRE', KEYS[3], ttl)
  end
end
if reserve > 0 and (tpm > 0 or quota > 0) then
  redis.call('HSET', KEYS[4], lease, fmt(reserve))
  redis.call('ZADD', KEYS[5], fmt(now + resvttl), lease)
  redis.call('INCRBY', KEYS[9], fmt(reserve - prev))
  local ttl = fmt(math.floor(resvttl / 1000) + 1000)
  for i = 4, 5 do redis.call('PEXPIRE', KEYS[i], ttl) end
  redis.call('PEXPIRE', KEYS[9], ttl)
  remtok = math.max(remtok - reserve, 0)
end
return {1, '', '0', limreq, remreq, fmt(resetreq), limtok, remtok, fmt(resettok), 0}
`

// globalLua is the global bucket's decision on Redis Cluster: KEYS[1] is the
// bucket, ARGV after the clock the interval (µs) and burst. It returns
// allowed (0/1) and the retry after (µs).
const globalLua = luaClock + `
local ok, t, _, after = gcra(KEYS[1], tonumber(ARGV[2]), tonumber(ARGV[3]))
if not ok then return {0, fmt(after)} end
settat(KEYS[1], t)
return {1, '0'}
`

// undoLua takes back one admission on Redis Cluster when the other half of
// the decision rejected it. With ARGV[2] = "global", KEYS[1] is the global
// bucket and ARGV[3] its interval (µs). Otherwise KEYS[1..5] are the key's
// tat, rpm, leases, resv, resvexp and resvsum, ARGV[2] the lease id and
// ARGV[3] the key's interval (µs, 0 = none).
const undoLua = luaClock + `
local function refund(key, T)
  local tat = tonumber(redis.call('GET', key) or '0')
  if tat - T <= now then
    redis.call('DEL', key)
  else
    settat(key, tat - T)
  end
end
local T = tonumber(ARGV[3])
if ARGV[2] == 'global' then
  refund(KEYS[1], T)
  return 1
end
if T > 0 then refund(KEYS[1], T) end
local lease = ARGV[2]
redis.call('ZREM', KEYS[2], lease)
redis.call('ZREM', KEYS[3], lease)
local r = tonumber(redis.call('HGET', KEYS[4], lease) or '0')
redis.call('HDEL', KEYS[4], lease)
redis.call('ZREM', KEYS[5], lease)
if r > 0 and redis.call('DECRBY', KEYS[6], fmt(r)) <= 0 then redis.call('DEL', KEYS[6]) end
return 1
`

// renewLua keeps a running request's hold on its key: lease ARGV[2] in
// KEYS[1] (the leases) moves to expire ARGV[3] µs from now if it is still
// held, and its reservation in KEYS[2] (the expiries) to ARGV[4] µs from now
// if it is still there, never earlier than it already expires; KEYS[3] and
// KEYS[4] (the reservations and their sum) live as long as the latest. It
// returns 1 if either was held.
const renewLua = luaClock + `
local held = 0
local exp = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[2]) or '0')
if exp > now then
  held = 1
  local at = now + tonumber(ARGV[3])
  redis.call('ZADD', KEYS[1], fmt(at), ARGV[2])
  local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
  redis.call('PEXPIRE', KEYS[1], fmt(math.floor((tonumber(last[2]) - now) / 1000) + 1000))
end
local rexp = tonumber(redis.call('ZSCORE', KEYS[2], ARGV[2]) or '0')
if rexp > now then
  held = 1
  local at = now + tonumber(ARGV[4])
  if at > rexp then
    redis.call('ZADD', KEYS[2], fmt(at), ARGV[2])
    local ttl = fmt(math.floor(tonumber(ARGV[4]) / 1000) + 1000)
    for i = 2, 4 do redis.call('PEXPIRE', KEYS[i], ttl, 'GT') end
  end
end
return held
`

func (a *RedisAdmitter) tag(keyID string) string { return a.prefix + ":{" + keyID + "}" }
func (a *RedisAdmitter) globalKey() string       { return a.prefix + ":global:rl:tat" }

// keyKeys returns KEYS[1..11] of admitLua for keyID, the period id pid and
// the request id leaseID, with room for the global bucket.
func (a *RedisAdmitter) keyKeys(keyID, pid, leaseID string) []string {
	t := a.tag(keyID)
	keys := make([]string, 11, 12)
	keys[0], keys[1], keys[2], keys[3] = t+":rl:tat", t+":rl:rpm", t+":rl:leases", t+":rl:resv"
	keys[4], keys[5], keys[6], keys[7] = t+":rl:resvexp", t+":rl:tpm", t+":usage:"+pid, t+":reserved"
	keys[8], keys[9], keys[10] = t+":rl:resvsum", t+":rl:tpmsum", t+":rl:cancel:"+leaseID
	return keys
}

func micros(d time.Duration) int64 { return int64(d / time.Microsecond) }

// Admit decides req in one round trip (shared with concurrent calls); see
// Admitter and RedisAdmitter.
func (a *RedisAdmitter) Admit(ctx context.Context, req AdmitRequest) (Decision, error) {
	req = req.withDefaults()
	clock, at := "0", time.Now()
	if a.now != nil {
		at = a.now()
		clock = strconv.FormatInt(at.UnixMicro(), 10)
	}
	var gT, gBurst, kT, kBurst int64
	if req.Global.RPS > 0 {
		iv, burst := req.Global.Emission()
		gT, gBurst = max(micros(iv), 1), burst
	}
	if req.Limits.RPS > 0 {
		iv, burst := emission(req.Limits.RPS, keyBurst(req.Limits.RPS))
		kT, kBurst = max(micros(iv), 1), burst
	}
	// The quota is the one of the period the request arrived in, where
	// its usage is counted.
	arrived := at
	if !req.At.IsZero() {
		arrived = req.At
	}
	var pend int64
	if end := PeriodEnd(req.Period, arrived); !end.IsZero() {
		pend = end.UnixMicro()
	}
	keys := a.keyKeys(req.KeyID, PeriodID(req.Period, arrived), req.LeaseID)
	args := []any{clock, req.LeaseID, gT, gBurst, kT, kBurst, req.Limits.RPM, req.Limits.TPM,
		req.Limits.MaxConcurrent, req.Quota, req.Reserve, micros(req.LeaseTTL), micros(a.resvTTL), pend}

	if gT == 0 || !a.split {
		if gT > 0 {
			keys = append(keys, a.globalKey())
		}
		res, err := a.batch.evalOnce(ctx, a.admitScript.callOnce(keys, args)).Slice()
		if err != nil {
			a.cancel(req)
			return Decision{}, fmt.Errorf("admit key %s: %w", req.KeyID, err)
		}
		d, err := decisionOf(res)
		if err != nil {
			a.cancel(req)
		}
		return d, err
	}
	d, err := a.admitSplit(ctx, req, keys, args, clock, gT, gBurst, kT)
	if err != nil {
		a.cancel(req)
	}
	return d, err
}

// cancel has the canceller cancel req's admission, which failed: whatever
// it recorded is freed, and it refuses itself should it run later. The
// marker lives as long as anything the admission could hold.
func (a *RedisAdmitter) cancel(req AdmitRequest) {
	k := a.keyKeys(req.KeyID, "", req.LeaseID)
	keys := []string{k[1], k[2], k[3], k[4], k[8], k[10]}
	ttl := max(req.LeaseTTL, a.resvTTL).Milliseconds()
	q := scriptCmd(a.cancelScript, keys, func() []any { return []any{req.LeaseID, ttl} })
	q.wait = true
	a.cancels.add(q)
}

// admitSplit decides req on Redis Cluster: the key's script and the global
// script in one pipeline, then, when only one of them admitted, its undo.
func (a *RedisAdmitter) admitSplit(ctx context.Context, req AdmitRequest, keys []string, args []any, clock string, gT, gBurst, kT int64) (Decision, error) {
	// As on a single node (see combiner.send), the decision is made whole
	// even if the caller leaves meanwhile: cut short, it could not tell
	// whether it admitted, and the caller releases what it admitted.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), a.batch.callTimeout())
	defer cancel()
	gkeys, gargs := []string{a.globalKey()}, []any{clock, gT, gBurst}
	run := func(evalsha bool) (*redis.Cmd, *redis.Cmd, error) {
		pipe := a.rdb.Pipeline()
		var kc, gc *redis.Cmd
		kc = a.admitScript.queue(ctx, pipe, !evalsha, keys, args)
		gc = a.globalScript.queue(ctx, pipe, !evalsha, gkeys, gargs)
		_, err := pipe.Exec(ctx)
		return kc, gc, err
	}
	kc, gc, err := run(true)
	if err != nil && connClosed(kc.Err()) && connClosed(gc.Err()) {
		// The connection closed without an answer (see execQueued): sent
		// once more, the key's admission as a second sending. The global
		// bucket's may take a second place, and refuse.
		args = append(args[:len(args):len(args)], "1")
		kc, gc, err = run(true)
	}
	if err != nil && (isNoScript(kc.Err()) || isNoScript(gc.Err())) {
		// A NOSCRIPT reply means that script did not run; the other one
		// may have, so it is undone (if it admitted) before both are sent
		// again with their source.
		if kc.Err() == nil || gc.Err() == nil {
			if err := a.undoRan(ctx, req, kc, gc, clock, gT, kT); err != nil {
				return Decision{}, err
			}
		}
		kc, gc, err = run(false)
	}
	if err != nil {
		return Decision{}, fmt.Errorf("admit key %s: %w", req.KeyID, err)
	}
	res, _ := kc.Slice()
	d, err := decisionOf(res)
	if err != nil {
		return Decision{}, err
	}
	g, _ := gc.Slice()
	gOK := len(g) == 2 && g[0] == int64(1)
	switch {
	case d.Allowed && !gOK:
		if err := a.undoKey(ctx, req, clock, kT); err != nil {
			return Decision{}, err
		}
		var retry int64
		if len(g) == 2 {
			retry, _ = parseInt(g[1])
		}
		d.Allowed, d.Reason, d.RetryAfter = false, ReasonGlobalRPS, time.Duration(retry)*time.Microsecond
	case !d.Allowed && gOK:
		if err := a.undoScript.run(ctx, a.rdb, []string{a.globalKey()}, clock, "global", gT).Err(); err != nil {
			return Decision{}, fmt.Errorf("admit key %s: undo global: %w", req.KeyID, err)
		}
	}
	return d, nil
}

// undoRan undoes whichever half of a split decision ran and admitted.
func (a *RedisAdmitter) undoRan(ctx context.Context, req AdmitRequest, kc, gc *redis.Cmd, clock string, gT, kT int64) error {
	if kc.Err() == nil {
		if res, _ := kc.Slice(); len(res) > 0 && res[0] == int64(1) {
			return a.undoKey(ctx, req, clock, kT)
		}
	}
	if gc.Err() == nil {
		if res, _ := gc.Slice(); len(res) > 0 && res[0] == int64(1) {
			return a.undoScript.run(ctx, a.rdb, []string{a.globalKey()}, clock, "global", gT).Err()
		}
	}
	return nil
}

func (a *RedisAdmitter) undoKey(ctx context.Context, req AdmitRequest, clock string, kT int64) error {
	k := a.keyKeys(req.KeyID, "", req.LeaseID)
	keys := append(k[:5:5], k[8])
	if err := a.undoScript.run(ctx, a.rdb, keys, clock, req.LeaseID, kT).Err(); err != nil {
		return fmt.Errorf("admit key %s: undo: %w", req.KeyID, err)
	}
	return nil
}

// FollowUps reports the calls waiting to be sent again until Redis answers
// them, and those dropped because too many were waiting.
func (a *RedisAdmitter) FollowUps() FollowUps { return a.cancels.followUps() }

// Release frees a lease; see Admitter. When it fails, the canceller sends
// the release again until Redis answers.
func (a *RedisAdmitter) Release(ctx context.Context, keyID, leaseID string) error {
	key := a.tag(keyID) + ":rl:leases"
	if err := a.batch.zrem(ctx, key, leaseID).Err(); err != nil {
		a.cancels.add(releaseAgain(key, leaseID))
		return fmt.Errorf("release lease of key %s: %w", keyID, err)
	}
	if a.batch.wait.n > 0 {
		// Done on the master; sent again in the background until
		// enough replicas have it (see WithWaitReplicas), not waited
		// for here: a request's end, and the admissions sharing its
		// pipeline, would wait for the replicas too, and for a second
		// each while there are none.
		a.cancels.confirm(releaseAgain(key, leaseID))
	}
	return nil
}

// releaseAgain is the release of lease leaseID in key for the canceller,
// to be sent until Redis, and the replicas waited for, have it.
func releaseAgain(key, leaseID string) queued {
	return queued{wait: true, send: func(ctx context.Context, pipe redis.Pipeliner, _ bool) redis.Cmder {
		return pipe.ZRem(ctx, key, leaseID)
	}}
}

// Renew extends a held lease and reservation; see LeaseRenewer.
func (a *RedisAdmitter) Renew(ctx context.Context, keyID, leaseID string, ttl time.Duration) (bool, error) {
	clock := "0"
	if a.now != nil {
		clock = strconv.FormatInt(a.now().UnixMicro(), 10)
	}
	t := a.tag(keyID)
	keys := []string{t + ":rl:leases", t + ":rl:resvexp", t + ":rl:resv", t + ":rl:resvsum"}
	n, err := a.renewScript.Run(ctx, a.rdb, keys, clock, leaseID, micros(ttl), micros(a.resvTTL)).Int()
	if err != nil {
		return false, fmt.Errorf("renew lease of key %s: %w", keyID, err)
	}
	return n == 1, nil
}

// decisionOf reads admitLua's reply.
func decisionOf(res []any) (Decision, error) {
	if len(res) != 10 {
		return Decision{}, fmt.Errorf("admit: unexpected reply %v", res)
	}
	var n [10]int64
	for _, i := range []int{0, 2, 3, 4, 5, 6, 7, 8, 9} {
		v, err := parseInt(res[i])
		if err != nil {
			return Decision{}, fmt.Errorf("admit: reply field %d: %w", i, err)
		}
		n[i] = v
	}
	reason, _ := res[1].(string)
	if reason == "cancelled" {
		// Only an admission run after its call failed meets its marker,
		// and nobody reads that reply.
		return Decision{}, errors.New("admit: cancelled")
	}
	us := func(v int64) time.Duration { return time.Duration(max(v, 0)) * time.Microsecond }
	return Decision{
		Allowed:           n[0] == 1,
		Reason:            reason,
		RetryAfter:        us(n[2]),
		LimitRequests:     n[3],
		RemainingRequests: n[4],
		ResetRequests:     us(n[5]),
		LimitTokens:       n[6],
		RemainingTokens:   n[7],
		ResetTokens:       us(n[8]),

		HeldByReservations: n[9] == 1,
	}, nil
}

func parseInt(v any) (int64, error) {
	switch x := v.(type) {
	case int64:
		return x, nil
	case string:
		return strconv.ParseInt(x, 10, 64)
	}
	return 0, fmt.Errorf("not an integer: %v", v)
}
