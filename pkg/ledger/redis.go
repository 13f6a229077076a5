package ledger

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// RedisStore is a ledger in Redis, shared by any number of processes. It is
// safe for concurrent use.
//
// Key layout, for prefix P (keyID and userID are public ids, never secrets):
//
//	P:{<keyID>}:usage:<periodID>     hash: p, c, n (prompt, completion, requests)
//	                                 and m:<model>:p, m:<model>:c, m:<model>:n
//	P:{<keyID>}:seen:<dayID>         set of the request ids applied whose entry time
//	                                 is in that UTC day; expires the dedupe retention
//	                                 after the day ends (or after now, if later)
//	P:{<keyID>}:reserved             outstanding reserved tokens (absent = 0)
//	P:{<keyID>}:rl:*                 the RedisAdmitter's state (see there); Apply
//	                                 settles its reservations and fills its TPM window
//	P:{u:<userID>}:usage:<periodID>  hash: p, c, n
//	P:{u:<userID>}:seen:<dayID>      the same, for the per-user totals
//	P:keys:<periodID>                set of key ids with usage in the period
//
// A redelivered event carries the time of its first delivery, so its request
// id is looked up in the one set it was added to; one set per key and day
// costs a fraction of the memory and the work of one expiring key per
// request.
//
// Every key of one API key carries the {<keyID>} hash tag, so the script that
// applies a key's entries touches one hash slot and runs on Redis Cluster; the
// per-user totals live in their own slot and are applied by a second script
// call, deduplicated by their own seen sets, so a redelivery never counts
// either twice.
// The period sets are single keys: UsageAll reads one set and pipelines one
// read per key, which works on a single node and on a cluster alike. Usage
// hashes do not expire. The prefix must not contain '{' or '}', and a key id
// must not start with "u:", the user ids' tag.
type RedisStore struct {
	rdb    redis.UniversalClient
	prefix string
	ttl    int64 // dedupe retention in seconds
	// wait is how many replicas must have an Apply's writes for it to
	// succeed (see WithWaitReplicas).
	wait replicaWait

	apply, addReserved *redis.Script
}

// NewRedis returns a store on rdb whose keys all start with prefix. It reads
// WithDedupeRetention and WithWaitReplicas. The caller owns rdb: Close does
// not close it.
func NewRedis(rdb redis.UniversalClient, prefix string, opts ...Option) *RedisStore {
	o := newOptions(opts)
	return &RedisStore{
		rdb:         rdb,
		prefix:      prefix,
		ttl:         max(int64(o.dedupeRetention/time.Second), 1),
		wait:        o.replicaWait(rdb, prefix),
		apply:       redis.NewScript(applyLua),
		addReserved: redis.NewScript(addReservedLua),
	}
}

// applyLua applies a group of entries of one key, or of one user, in one
// atomic step: each entry whose request id is new to its day's seen set adds
// its counts, and the sums go to the usage hashes in one HINCRBY per field.
// It returns how many entries were new.
//
// KEYS[1] is the reservation counter new entries release their reserved
// tokens from, KEYS[2] and KEYS[3] the RedisAdmitter's reservations (hash
// and expiry zset), KEYS[4] its TPM window, KEYS[5] the reservations' sum
// and KEYS[6] the TPM window's sum (kept up to date only while it exists);
// the other keys are the seen sets and usage hashes ARGV points at.
//
// ARGV[1] is "1" for a key's group (count per model, settle reservations,
// fill the TPM window), "0" for a user's; ARGV[2] the number of classes.
// A class is what entries share: 7 values, the KEYS index of their seen set,
// the unix time it expires at, the KEYS indexes of their four period hashes
// and their model. Then come 6 values per entry: its class (1-based), its
// request id, prompt, completion, reserved and the unix second of its time.
// Each seen set is asked once (SMISMEMBER) and added to once, and the
// reservations are looked up, settled and dropped once per call, so the
// commands a call runs do not grow with its entries.
//
// A new entry whose request holds an admitter reservation releases that
// reservation (and not the counter); any other releases its Reserved tokens
// from the counter. Its tokens go to the TPM window's second of the entry's
// time, which the admitter drops once it is 60 s old.
const applyLua = `
local models = ARGV[1] == '1'
local function fmt(x) return string.format('%d', x) end
local cls, a = {}, 3
for i = 1, tonumber(ARGV[2]) do
  cls[i] = {s = tonumber(ARGV[a]), at = tonumber(ARGV[a + 1]),
    h = {tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4]), tonumber(ARGV[a + 5])},
    m = ARGV[a + 6], p = 0, c = 0, n = 0}
  a = a + 7
end

-- The new entries: not in their seen set, and first of their id in the call.
local sets, byset = {}, {}
for e = a, #ARGV, 6 do
  local s = cls[tonumber(ARGV[e])].s
  if not byset[s] then
    byset[s] = {}
    sets[#sets + 1] = s
  end
  local l = byset[s]
  l[#l + 1] = e
end
local new, expire = {}, {}
for _, s in ipairs(sets) do
  local l, ids = byset[s], {}
  for i, e in ipairs(l) do ids[i] = ARGV[e + 1] end
  local there = redis.call('SMISMEMBER', KEYS[s], unpack(ids))
  local add, dup = {}, {}
  for i, e in ipairs(l) do
    if there[i] == 0 and not dup[ids[i]] then
      dup[ids[i]] = true
      add[#add + 1] = ids[i]
      new[#new + 1] = e
      local at = cls[tonumber(ARGV[e])].at
      if (expire[s] or 0) < at then expire[s] = at end
    end
  end
  if #add > 0 then redis.call('SADD', KEYS[s], unpack(add)) end
end
if #new == 0 then return 0 end

local release, settled = 0, 0
local held = {}
if models then
  local ids = {}
  for i, e in ipairs(new) do ids[i] = ARGV[e + 1] end
  held = redis.call('HMGET', KEYS[2], unpack(ids))
  local gone = {}
  for i, v in ipairs(held) do
    if v then
      gone[#gone + 1] = ids[i]
      settled = settled + tonumber(v)
    end
  end
  if #gone > 0 then
    redis.call('HDEL', KEYS[2], unpack(gone))
    redis.call('ZREM', KEYS[3], unpack(gone))
  end
end

local tpm, tpmlo, secs, bysec = 0, nil, {}, {}
for i, e in ipairs(new) do
  local k = cls[tonumber(ARGV[e])]
  local p, c = tonumber(ARGV[e + 2]), tonumber(ARGV[e + 3])
  k.p, k.c, k.n = k.p + p, k.c + c, k.n + 1
  if not held[i] then release = release + tonumber(ARGV[e + 4]) end
  if models and p + c > 0 then
    local sec = ARGV[e + 5]
    if not bysec[sec] then
      bysec[sec] = 0
      secs[#secs + 1] = sec
    end
    bysec[sec] = bysec[sec] + p + c
    tpm = tpm + p + c
    local n = tonumber(sec)
    if not tpmlo or n < tpmlo then tpmlo = n end
  end
end

local sums, hashes = {}, {}
local function add(h, f, v)
  local t = sums[h]
  if not t then
    t = {}
    sums[h] = t
    hashes[#hashes + 1] = h
  end
  t[f] = (t[f] or 0) + v
end
for _, k in ipairs(cls) do
  if k.n > 0 then
    local m = 'm:' .. k.m .. ':'
    for _, h in ipairs(k.h) do
      add(h, 'p', k.p)
      add(h, 'c', k.c)
      add(h, 'n', k.n)
      if models then
        add(h, m .. 'p', k.p)
        add(h, m .. 'c', k.c)
        add(h, m .. 'n', k.n)
      end
    end
  end
end
for _, s in ipairs(sets) do
  if expire[s] then redis.call('EXPIREAT', KEYS[s], fmt(expire[s])) end
end
for _, h in ipairs(hashes) do
  for f, v in pairs(sums[h]) do
    redis.call('HINCRBY', KEYS[h], f, fmt(v))
  end
end
if tpmlo then
  for _, sec in ipairs(secs) do redis.call('HINCRBY', KEYS[4], sec, fmt(bysec[sec])) end
  redis.call('EXPIRE', KEYS[4], 120)
  -- The window's sum is kept only while it is whole: when it is absent the
  -- admitter rebuilds it from the window.
  local lo = redis.call('HGET', KEYS[6], 'lo')
  if lo then
    redis.call('HINCRBY', KEYS[6], 's', fmt(tpm))
    if tpmlo < tonumber(lo) then redis.call('HSET', KEYS[6], 'lo', fmt(tpmlo)) end
    redis.call('EXPIRE', KEYS[6], 120)
  end
end
if settled > 0 and redis.call('DECRBY', KEYS[5], fmt(settled)) <= 0 then
  redis.call('DEL', KEYS[5])
end
if release > 0 and redis.call('DECRBY', KEYS[1], fmt(release)) <= 0 then
  redis.call('DEL', KEYS[1])
end
return #new
`

// maxGroup bounds the entries one script call applies, so that a batch
// dominated by one key never holds Redis for long.
const maxGroup = 256

// addReservedLua adds ARGV[1] to the counter KEYS[1], never below zero.
const addReservedLua = `
local v = redis.call('INCRBY', KEYS[1], ARGV[1])
if v <= 0 then
  redis.call('DEL', KEYS[1])
  return 0
end
return v
`

func (s *RedisStore) keyTag(keyID string) string   { return s.prefix + ":{" + keyID + "}" }
func (s *RedisStore) userTag(userID string) string { return s.prefix + ":{u:" + userID + "}" }
func (s *RedisStore) keysSet(pid string) string    { return s.prefix + ":keys:" + pid }
func (s *RedisStore) reservedKey(keyID string) string {
	return s.keyTag(keyID) + ":reserved"
}

// scriptCall is one call of applyLua: a group of entries of one key or one
// user. It is kept so that it can be sent again with EVAL when the server
// does not have the script cached.
type scriptCall struct {
	keys    []string
	index   map[string]int // KEYS index (1-based) by key name
	classes []any          // 7 values per class
	byClass map[class]int  // class number (1-based) by class
	entries []any          // 6 values per entry
	n       int            // entries in the group
	isKey   bool           // a key group, whose result counts as applied
	q       queued         // the call, once sent
}

// class is what the entries of a group share with others: where they are
// deduplicated and counted.
type class struct {
	seen     int
	expireAt int64
	hashes   [4]int
	model    string
}

// newScriptCall starts a group of the entries whose keys start with tag.
func newScriptCall(tag string, isKey bool) *scriptCall {
	// A user's group never settles reservations nor fills a TPM window:
	// its KEYS[1..6] are named in its own slot but never written.
	keys := []string{tag + ":reserved", tag + ":rl:resv", tag + ":rl:resvexp", tag + ":rl:tpm", tag + ":rl:resvsum", tag + ":rl:tpmsum"}
	index := make(map[string]int, len(keys))
	for i, k := range keys {
		index[k] = i + 1
	}
	return &scriptCall{keys: keys, index: index, byClass: map[class]int{}, isKey: isKey}
}

// key returns the KEYS index of name, adding it if needed.
func (c *scriptCall) key(name string) int {
	if i, ok := c.index[name]; ok {
		return i
	}
	c.keys = append(c.keys, name)
	c.index[name] = len(c.keys)
	return len(c.keys)
}

// add appends e to the group whose keys all start with tag.
func (c *scriptCall) add(tag string, e Entry, pids *[4]string, expireAt, reserved int64, model string) {
	k := class{seen: c.key(tag + ":seen:" + pids[0]), expireAt: expireAt, model: model}
	for i, pid := range pids {
		k.hashes[i] = c.key(tag + ":usage:" + pid)
	}
	n, ok := c.byClass[k]
	if !ok {
		c.classes = append(c.classes, k.seen, k.expireAt, k.hashes[0], k.hashes[1], k.hashes[2], k.hashes[3], k.model)
		n = len(c.byClass) + 1
		c.byClass[k] = n
	}
	c.entries = append(c.entries, n, e.RequestID, e.PromptTokens, e.CompletionTokens, reserved, e.tpmTime().Unix())
	c.n++
}

// args returns applyLua's ARGV for the group.
func (c *scriptCall) args() []any {
	models := "0"
	if c.isKey {
		models = "1"
	}
	args := make([]any, 0, 2+len(c.classes)+len(c.entries))
	args = append(args, models, len(c.byClass))
	args = append(args, c.classes...)
	return append(args, c.entries...)
}

// Apply records entries in one round trip: the entries are grouped by key,
// and by user, and each group is applied by one atomic script call; the calls
// and the period-set updates are pipelined. Each entry is applied at most
// once, to its key's totals and to its user's; when Apply returns an error
// some entries may have been applied, and applying the batch again is safe.
// Deduplication is per key and UTC day of the entry's time: a request id
// belongs to one key, and its redeliveries carry its time. A batch with an
// invalid entry is rejected as a whole with an error wrapping
// ErrInvalidEntry.
func (s *RedisStore) Apply(ctx context.Context, entries []Entry) (int, error) {
	for _, e := range entries {
		if err := e.Validate(); err != nil {
			return 0, err
		}
	}
	if len(entries) == 0 {
		return 0, nil
	}
	var calls []*scriptCall
	open := map[string]*scriptCall{} // the group being filled, by tag
	group := func(tag string, isKey bool) *scriptCall {
		c := open[tag]
		if c == nil || c.n == maxGroup {
			c = newScriptCall(tag, isKey)
			open[tag] = c
			calls = append(calls, c)
		}
		return c
	}
	sets := map[string]map[string]struct{}{}
	now := time.Now().Unix()
	for _, e := range entries {
		var pids [4]string
		for i, p := range Periods {
			pids[i] = PeriodID(p, e.Time)
			ks := sets[pids[i]]
			if ks == nil {
				ks = map[string]struct{}{}
				sets[pids[i]] = ks
			}
			ks[e.KeyID] = struct{}{}
		}
		expireAt := max(PeriodEnd(Daily, e.Time).Unix(), now) + s.ttl
		tag := s.keyTag(e.KeyID)
		group(tag, true).add(tag, e, &pids, expireAt, e.Reserved, e.Model)
		if e.UserID != "" {
			// A user's groups never release reservations: their counter
			// key is named but never written.
			utag := s.userTag(e.UserID)
			group(utag, false).add(utag, e, &pids, expireAt, 0, "")
		}
	}

	qs := make([]*queued, 0, len(calls)+len(sets))
	for _, c := range calls {
		c.q = scriptCmd(s.apply, c.keys, c.args)
		c.q.wait = true
		qs = append(qs, &c.q)
	}
	// The period sets only list key ids; adding one is idempotent, and
	// UsageAll skips a listed key whose totals are empty.
	for pid, ks := range sets {
		key, members := s.keysSet(pid), make([]any, 0, len(ks))
		for k := range ks {
			members = append(members, k)
		}
		qs = append(qs, &queued{wait: true, send: func(ctx context.Context, pipe redis.Pipeliner, _ bool) redis.Cmder {
			return pipe.SAdd(ctx, key, members...)
		}})
	}
	// A script the server has not cached does not run: execQueued sends
	// those calls again with their source, which also caches them. With
	// s.wait, each pipeline it sends ends with a WAIT for its writes, and
	// its calls fail with ErrNotReplicated when too few replicas have
	// them.
	execQueued(ctx, s.rdb, qs, s.wait)
	for _, q := range qs {
		if err := q.cmd.Err(); err != nil {
			return 0, fmt.Errorf("apply %d entries: %w", len(entries), err)
		}
	}

	applied := 0
	for _, c := range calls {
		if !c.isKey {
			continue
		}
		n, err := c.q.cmd.(*redis.Cmd).Int()
		if err != nil {
			return 0, fmt.Errorf("apply %d entries: %w", len(entries), err)
		}
		applied += n
	}
	return applied, nil
}

// ErrNotReplicated is an Apply whose writes fewer replicas than
// WithWaitReplicas asks for acknowledged in time: they may be lost in a
// failover, so its entries must be applied again (which counts each once).
var ErrNotReplicated = errors.New("not acknowledged by enough replicas")

func isNoScript(err error) bool { return err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") }

// Usage returns key keyID's usage in the period of kind p containing at.
func (s *RedisStore) Usage(ctx context.Context, keyID string, p Period, at time.Time) (Totals, error) {
	key := s.keyTag(keyID) + ":usage:" + PeriodID(p, at)
	vals, err := s.rdb.HMGet(ctx, key, "p", "c", "n").Result()
	if err != nil {
		return Totals{}, fmt.Errorf("usage of key %s: %w", keyID, err)
	}
	return totalsOf(vals)
}

// UsageAll returns every key's usage in the period of kind p containing at:
// one read of the period's key set, then one pipelined round trip.
func (s *RedisStore) UsageAll(ctx context.Context, p Period, at time.Time) (map[string]Totals, error) {
	pid := PeriodID(p, at)
	keyIDs, err := s.rdb.SMembers(ctx, s.keysSet(pid)).Result()
	if err != nil {
		return nil, fmt.Errorf("usage of all keys: %w", err)
	}
	out := make(map[string]Totals, len(keyIDs))
	if len(keyIDs) == 0 {
		return out, nil
	}
	pipe := s.rdb.Pipeline()
	cmds := make([]*redis.SliceCmd, len(keyIDs))
	for i, k := range keyIDs {
		cmds[i] = pipe.HMGet(ctx, s.keyTag(k)+":usage:"+pid, "p", "c", "n")
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, fmt.Errorf("usage of all keys: %w", err)
	}
	for i, k := range keyIDs {
		t, err := totalsOf(cmds[i].Val())
		if err != nil {
			return nil, fmt.Errorf("usage of key %s: %w", k, err)
		}
		if t.Requests > 0 {
			out[k] = t
		}
	}
	return out, nil
}

// UsageByModel returns key keyID's usage in the period of kind p containing
// at, by model.
func (s *RedisStore) UsageByModel(ctx context.Context, keyID string, p Period, at time.Time) (map[string]Totals, error) {
	key := s.keyTag(keyID) + ":usage:" + PeriodID(p, at)
	fields, err := s.rdb.HGetAll(ctx, key).Result()
	if err != nil {
		return nil, fmt.Errorf("usage by model of key %s: %w", keyID, err)
	}
	out := map[string]Totals{}
	for f, v := range fields {
		rest, ok := strings.CutPrefix(f, "m:")
		if !ok || len(rest) < 2 || rest[len(rest)-2] != ':' {
			continue
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("usage by model of key %s: field %s: %w", keyID, f, err)
		}
		model := rest[:len(rest)-2]
		t := out[model]
		switch rest[len(rest)-1] {
		case 'p':
			t.PromptTokens = n
		case 'c':
			t.CompletionTokens = n
		case 'n':
			t.Requests = n
		}
		out[model] = t
	}
	for m, t := range out {
		t.TotalTokens = t.PromptTokens + t.CompletionTokens
		out[m] = t
	}
	return out, nil
}

// UsageByUser returns user userID's usage in the period of kind p containing
// at.
func (s *RedisStore) UsageByUser(ctx context.Context, userID string, p Period, at time.Time) (Totals, error) {
	key := s.userTag(userID) + ":usage:" + PeriodID(p, at)
	vals, err := s.rdb.HMGet(ctx, key, "p", "c", "n").Result()
	if err != nil {
		return Totals{}, fmt.Errorf("usage of user %s: %w", userID, err)
	}
	return totalsOf(vals)
}

// Reserved returns key keyID's outstanding reserved tokens: the counter
// AddReserved moves plus the reservations of requests a RedisAdmitter
// admitted (an expired one counts until the key's next admission drops it).
func (s *RedisStore) Reserved(ctx context.Context, keyID string) (int64, error) {
	pipe := s.rdb.Pipeline()
	counter := pipe.Get(ctx, s.reservedKey(keyID))
	resv := pipe.Get(ctx, s.keyTag(keyID)+":rl:resvsum")
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return 0, fmt.Errorf("reserved of key %s: %w", keyID, err)
	}
	n, err := counter.Int64()
	if err != nil && !errors.Is(err, redis.Nil) {
		return 0, fmt.Errorf("reserved of key %s: %w", keyID, err)
	}
	m, err := resv.Int64()
	if err != nil && !errors.Is(err, redis.Nil) {
		return 0, fmt.Errorf("reserved of key %s: %w", keyID, err)
	}
	n = max(n, 0) + max(m, 0)
	return n, nil
}

// AddReserved adds tokens to key keyID's reservation counter atomically; the
// counter never goes below zero.
func (s *RedisStore) AddReserved(ctx context.Context, keyID string, tokens int64) error {
	if err := s.addReserved.Run(ctx, s.rdb, []string{s.reservedKey(keyID)}, tokens).Err(); err != nil {
		return fmt.Errorf("add reserved %s: %w", keyID, err)
	}
	return nil
}

// Close does nothing: the caller owns the client.
func (s *RedisStore) Close() error { return nil }

// totalsOf reads the p, c, n fields of a usage hash, as HMGET returns them.
func totalsOf(vals []any) (Totals, error) {
	var n [3]int64
	for i, v := range vals {
		str, ok := v.(string)
		if !ok {
			continue // field absent
		}
		x, err := strconv.ParseInt(str, 10, 64)
		if err != nil {
			return Totals{}, fmt.Errorf("usage field: %w", err)
		}
		n[i] = x
	}
	return Totals{
		PromptTokens:     n[0],
		CompletionTokens: n[1],
		TotalTokens:      n[0] + n[1],
		Requests:         n[2],
	}, nil
}
