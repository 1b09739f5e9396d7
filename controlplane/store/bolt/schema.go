package bolt

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"go.etcd.io/bbolt"

	"tend.dev/tend/controlplane/store"
)

// This file is the only place that knows bucket names and key layouts: every
// read and write of the database goes through the typed accessors of txn
// below (like etcd's server/storage/schema/bucket.go).

// SchemaVersion is the on-disk layout this binary reads and writes. Opening a
// store with a newer version fails; an older one is upgraded in place by the
// steps in upgrades.
const SchemaVersion uint64 = 2

// ErrSchemaTooNew is returned by Open when the store was written by a newer
// tend-controlplane.
var ErrSchemaTooNew = errors.New("store schema version is newer than this binary supports")

type bucket struct {
	name []byte
}

// Every bucket of the store.
var (
	// meta: schema_version → 8-byte big-endian version.
	bucketMeta = bucket{[]byte("meta")}
	// agents: agent id → JSON store.Agent. Never deleted, so that an id is
	// never handed out twice.
	bucketAgents = bucket{[]byte("agents")}
	// agent_names: name → id of the agent that last took the name.
	bucketAgentNames = bucket{[]byte("agent_names")}
	// tokens: token id → JSON store.Token.
	bucketTokens = bucket{[]byte("tokens")}
	// policies: name → JSON store.Policy.
	bucketPolicies = bucket{[]byte("policies")}
	// policy_versions: name → 8-byte last version ever given, kept after a
	// delete so that a re-created policy never repeats a version.
	bucketPolicyVersions = bucket{[]byte("policy_versions")}
	// check_state: agentID 0x00 checkID → checkRecord, a checkpoint of the
	// check's state (see results.go). Schema 1: a stateHeader and the
	// latest protobuf CheckResult.
	bucketCheckState = bucket{[]byte("check_state")}
	// results_log: log index (8, big-endian, from 1) → logEntry. Every
	// stored result is appended here; the head is trimmed in order.
	bucketResultsLog = bucket{[]byte("results_log")}
	// history_cold: agentID 0x00 checkID 0x00 log index(8, big-endian) →
	// logEntry, for results trimmed from the log head while still among
	// their check's last HistoryPerCheck (checks slower than the rest).
	bucketHistoryCold = bucket{[]byte("history_cold")}
	// history (schema 1 only, folded into history_cold by the upgrade to
	// 2): agentID 0x00 checkID 0x00 seq(8, big-endian) → protobuf
	// CheckResult.
	bucketHistory = bucket{[]byte("history")}
	// agent_counters: agent id → counterRecord (16 bytes).
	bucketAgentCounters = bucket{[]byte("agent_counters")}

	// Incidents and tasks. The index buckets hold nothing that is not
	// derived from the records by incidentIndex and taskIndex (except
	// task_seq), so Verify can rebuild and compare them.

	// incidents: incident id → JSON store.Incident.
	bucketIncidents = bucket{[]byte("incidents")}
	// open_incidents: agentID 0x00 policy → id of the one non-terminal
	// incident of that (agent, policy).
	bucketOpenIncidents = bucket{[]byte("open_incidents")}
	// incidents_by_time: timeKey(openedAt) id → agentID 0x00 policy.
	bucketIncidentsByTime = bucket{[]byte("incidents_by_time")}
	// incidents_by_agent: agentID 0x00 timeKey(openedAt) id → policy.
	bucketIncidentsByAgent = bucket{[]byte("incidents_by_agent")}
	// tasks: task id → JSON store.Task.
	bucketTasks = bucket{[]byte("tasks")}
	// task_seq: agent id → 8-byte big-endian last task seq given to the
	// agent. Never goes down and never deleted, so a seq is never reused.
	bucketTaskSeq = bucket{[]byte("task_seq")}
	// tasks_by_time: timeKey(createdAt) id → agent id.
	bucketTasksByTime = bucket{[]byte("tasks_by_time")}
	// tasks_by_agent: agentID 0x00 seq(8, big-endian) → task id.
	bucketTasksByAgent = bucket{[]byte("tasks_by_agent")}
	// tasks_by_incident: incidentID 0x00 seq(8, big-endian) → task id (all
	// tasks of an incident are for its agent, so seq orders them).
	bucketTasksByIncident = bucket{[]byte("tasks_by_incident")}
	// active_tasks: timeKey(createdAt) id → agent id, for tasks not in a
	// terminal state (what a restart resends or expires).
	bucketActiveTasks = bucket{[]byte("active_tasks")}
	// Policy safety-rail state (breaker, correlated hold): policy name →
	// store.PolicyState as JSON.
	bucketPolicyState = bucket{[]byte("policy_state")}
	// Admin API credentials: certificate serial (hex) → store.Credential.
	bucketCredentials = bucket{[]byte("credentials")}
)

var allBuckets = []bucket{
	bucketMeta, bucketAgents, bucketAgentNames, bucketTokens, bucketPolicies,
	bucketPolicyVersions, bucketCheckState, bucketResultsLog, bucketHistoryCold, bucketAgentCounters,
	bucketIncidents, bucketOpenIncidents, bucketIncidentsByTime, bucketIncidentsByAgent,
	bucketTasks, bucketTaskSeq, bucketTasksByTime, bucketTasksByAgent,
	bucketTasksByIncident, bucketActiveTasks, bucketPolicyState,
	bucketCredentials,
}

// incidentIndexBuckets and taskIndexBuckets are every bucket incidentIndex
// and taskIndex write to.
var (
	incidentIndexBuckets = []bucket{bucketOpenIncidents, bucketIncidentsByTime, bucketIncidentsByAgent}
	taskIndexBuckets     = []bucket{bucketTasksByTime, bucketTasksByAgent, bucketTasksByIncident, bucketActiveTasks}
)

var (
	keySchemaVersion = []byte("schema_version")
	// keyResultsCheckpoint (meta) → 8-byte big-endian log index: every
	// entry of results_log up to it is covered by check_state.
	keyResultsCheckpoint = []byte("results_checkpoint")
)

// upgradeStep moves a store from version from to from+1, inside the
// transaction that opens the store (so an upgrade is all or nothing).
// Buckets that are new in the target version are created after the last
// step; a step only converts data.
type upgradeStep struct {
	from  uint64
	about string
	apply func(tx *bbolt.Tx) error
}

// upgrades: when the layout of existing data changes, bump SchemaVersion
// and append {from: SchemaVersion-1, ...}.
//
// A new, empty bucket is not a layout change: migrate creates missing
// buckets on every open, and a binary ignores buckets it does not know. That
// is how incidents and tasks joined version 1 (a file written before them
// gets their empty buckets when a newer binary opens it; an older binary
// opening a newer file leaves them alone). A bucket that must be filled from
// existing data (an index over old records) needs a step.
var upgrades = []upgradeStep{
	{from: 1, about: "results history to an append-only log", apply: upgradeResultsLog},
}

// migrate initialises an empty database at version target, or upgrades an
// older one with steps. It returns the version found (0 for a new store).
func migrate(tx *bbolt.Tx, target uint64, steps []upgradeStep) (uint64, error) {
	meta := tx.Bucket(bucketMeta.name)
	if meta == nil {
		var other []string
		_ = tx.ForEach(func(name []byte, _ *bbolt.Bucket) error {
			other = append(other, string(name))
			return nil
		})
		if len(other) > 0 {
			return 0, fmt.Errorf("database has buckets %q but no schema version: it is not a Tend store", other)
		}
		for _, b := range allBuckets {
			if _, err := tx.CreateBucket(b.name); err != nil {
				return 0, fmt.Errorf("create bucket %s: %w", b.name, err)
			}
		}
		return 0, putSchemaVersion(tx, target)
	}
	v, err := schemaVersion(tx)
	if err != nil {
		return 0, err
	}
	found := v
	if v > target {
		return found, fmt.Errorf("%w: the store has version %d, this binary knows up to %d; run a newer tend-controlplane, or restore a backup made by this version",
			ErrSchemaTooNew, v, target)
	}
	for v < target {
		i := -1
		for j, s := range steps {
			if s.from == v {
				i = j
				break
			}
		}
		if i < 0 {
			return found, fmt.Errorf("no upgrade from store schema version %d to %d", v, v+1)
		}
		if err := steps[i].apply(tx); err != nil {
			return found, fmt.Errorf("upgrade store schema %d→%d (%s): %w", v, v+1, steps[i].about, err)
		}
		v++
	}
	for _, b := range allBuckets {
		if _, err := tx.CreateBucketIfNotExists(b.name); err != nil {
			return found, fmt.Errorf("create bucket %s: %w", b.name, err)
		}
	}
	if v != found {
		return found, putSchemaVersion(tx, v)
	}
	return found, nil
}

func schemaVersion(tx *bbolt.Tx) (uint64, error) {
	meta := tx.Bucket(bucketMeta.name)
	if meta == nil {
		return 0, errors.New("no meta bucket: not a Tend store")
	}
	raw := meta.Get(keySchemaVersion)
	if len(raw) != 8 {
		return 0, fmt.Errorf("corrupt schema version in the meta bucket (%d bytes, want 8)", len(raw))
	}
	return binary.BigEndian.Uint64(raw), nil
}

func putSchemaVersion(tx *bbolt.Tx, v uint64) error {
	return tx.Bucket(bucketMeta.name).Put(keySchemaVersion, u64(v))
}

// Keys.

// sep separates the parts of composite keys. Agent ids and check ids must not
// contain it (checked before anything is written).
const sep = 0x00

// checkKey is agentID 0x00 checkID: the key of a check's state.
func checkKey(agentID, checkID string) []byte {
	k := make([]byte, 0, len(agentID)+1+len(checkID))
	k = append(k, agentID...)
	k = append(k, sep)
	return append(k, checkID...)
}

// agentPrefix is agentID 0x00: the prefix of all of an agent's checks.
func agentPrefix(agentID string) []byte {
	return append([]byte(agentID), sep)
}

// historyPrefix is checkKey 0x00: the prefix of a check's history.
func historyPrefix(ck []byte) []byte {
	p := make([]byte, len(ck)+1, len(ck)+1+8)
	copy(p, ck)
	p[len(ck)] = sep
	return p
}

// historyKey is historyPrefix + seq (8 bytes, big-endian, so that keys sort
// by seq).
func historyKey(prefix []byte, seq uint64) []byte {
	k := make([]byte, len(prefix)+8)
	copy(k, prefix)
	binary.BigEndian.PutUint64(k[len(prefix):], seq)
	return k
}

// splitCheckKey returns the agent and check ids of a check_state key.
func splitCheckKey(k []byte) (agentID, checkID string, ok bool) {
	i := bytes.IndexByte(k, sep)
	if i < 0 {
		return "", "", false
	}
	return string(k[:i]), string(k[i+1:]), true
}

// prefixEnd returns the smallest key greater than every key with prefix p,
// or nil if there is none.
func prefixEnd(p []byte) []byte {
	end := bytes.Clone(p)
	for i := len(end) - 1; i >= 0; i-- {
		if end[i] < 0xff {
			end[i]++
			return end[:i+1]
		}
	}
	return nil
}

func u64(v uint64) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint64(b, v)
	return b
}

// txn gives typed access to the buckets of one bbolt transaction.
type txn struct {
	tx *bbolt.Tx
}

func (t txn) bucket(b bucket) *bbolt.Bucket {
	bk := t.tx.Bucket(b.name)
	if bk == nil {
		// Open creates every bucket before the store is used.
		panic(fmt.Sprintf("bolt store: bucket %q missing", b.name))
	}
	return bk
}

func getJSON[T any](b *bbolt.Bucket, key string) (T, bool, error) {
	var v T
	raw := b.Get([]byte(key))
	if raw == nil {
		return v, false, nil
	}
	if err := json.Unmarshal(raw, &v); err != nil {
		return v, false, fmt.Errorf("decode record %q: %w", key, err)
	}
	return v, true, nil
}

func putJSON(b *bbolt.Bucket, key string, v any) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return b.Put([]byte(key), raw)
}

// Agents and their name index.

func (t txn) agent(id string) (store.Agent, bool, error) {
	return getJSON[store.Agent](t.bucket(bucketAgents), id)
}

// agentIngest is the part of an agent record that storing its results
// reads: decoding only these fields skips the label and fact maps.
type agentIngest struct {
	Revoked       bool   `json:"revoked"`
	OutboxDropped uint64 `json:"outboxDropped"`
}

func (t txn) agentForIngest(id string) (agentIngest, bool, error) {
	var a agentIngest
	raw := t.bucket(bucketAgents).Get([]byte(id))
	if raw == nil {
		return a, false, nil
	}
	if err := json.Unmarshal(raw, &a); err != nil {
		return a, false, fmt.Errorf("decode record %q: %w", id, err)
	}
	return a, true, nil
}

func (t txn) agentExists(id string) bool {
	return t.bucket(bucketAgents).Get([]byte(id)) != nil
}

func (t txn) putAgent(a store.Agent) error {
	return putJSON(t.bucket(bucketAgents), a.ID, a)
}

func (t txn) forEachAgent(fn func(store.Agent) error) error {
	return t.bucket(bucketAgents).ForEach(func(k, v []byte) error {
		var a store.Agent
		if err := json.Unmarshal(v, &a); err != nil {
			return fmt.Errorf("decode agent %q: %w", k, err)
		}
		return fn(a)
	})
}

func (t txn) agentIDByName(name string) string {
	return string(t.bucket(bucketAgentNames).Get([]byte(name)))
}

func (t txn) putAgentName(name, id string) error {
	return t.bucket(bucketAgentNames).Put([]byte(name), []byte(id))
}

func (t txn) deleteAgentName(name string) error {
	return t.bucket(bucketAgentNames).Delete([]byte(name))
}

// Tokens.

func (t txn) token(id string) (store.Token, bool, error) {
	return getJSON[store.Token](t.bucket(bucketTokens), id)
}

func (t txn) putToken(tok store.Token) error {
	return putJSON(t.bucket(bucketTokens), tok.ID, tok)
}

// Policies.

func (t txn) policy(name string) (store.Policy, bool, error) {
	return getJSON[store.Policy](t.bucket(bucketPolicies), name)
}

func (t txn) putPolicy(p store.Policy) error {
	return putJSON(t.bucket(bucketPolicies), p.Name, p)
}

func (t txn) deletePolicy(name string) error {
	return t.bucket(bucketPolicies).Delete([]byte(name))
}

func (t txn) forEachPolicy(fn func(store.Policy) error) error {
	return t.bucket(bucketPolicies).ForEach(func(k, v []byte) error {
		var p store.Policy
		if err := json.Unmarshal(v, &p); err != nil {
			return fmt.Errorf("decode policy %q: %w", k, err)
		}
		return fn(p)
	})
}

func (t txn) lastPolicyVersion(name string) uint64 {
	raw := t.bucket(bucketPolicyVersions).Get([]byte(name))
	if len(raw) != 8 {
		return 0
	}
	return binary.BigEndian.Uint64(raw)
}

func (t txn) putLastPolicyVersion(name string, v uint64) error {
	return t.bucket(bucketPolicyVersions).Put([]byte(name), u64(v))
}

// Counters.

func (t txn) counters(agentID string) (counterRecord, error) {
	raw := t.bucket(bucketAgentCounters).Get([]byte(agentID))
	if raw == nil {
		return counterRecord{}, nil
	}
	return decodeCounters(raw)
}

func (t txn) putCounters(agentID string, c counterRecord) error {
	return t.bucket(bucketAgentCounters).Put([]byte(agentID), c.encode())
}

// Check state checkpoints.

func (t txn) checkStateBucket() *bbolt.Bucket { return t.bucket(bucketCheckState) }

func (t txn) putCheckRecord(ck []byte, r checkRecord) error {
	return t.checkStateBucket().Put(ck, r.encode())
}

// forEachState calls fn for every check state whose key starts with prefix
// (all of them for a nil prefix). k and v are only valid during the call.
func (t txn) forEachState(prefix []byte, fn func(k, v []byte) error) error {
	c := t.checkStateBucket().Cursor()
	var k, v []byte
	if prefix == nil {
		k, v = c.First()
	} else {
		k, v = c.Seek(prefix)
	}
	for ; k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
		if err := fn(k, v); err != nil {
			return err
		}
	}
	return nil
}

func (t txn) resultsCheckpoint() (uint64, error) {
	raw := t.bucket(bucketMeta).Get(keyResultsCheckpoint)
	switch len(raw) {
	case 0:
		return 0, nil
	case 8:
		return binary.BigEndian.Uint64(raw), nil
	}
	return 0, fmt.Errorf("corrupt results checkpoint in the meta bucket (%d bytes, want 8)", len(raw))
}

func (t txn) putResultsCheckpoint(idx uint64) error {
	return t.bucket(bucketMeta).Put(keyResultsCheckpoint, u64(idx))
}

// Results log and cold history.

// logBucket is results_log, filled to the brim: keys only ever grow, so
// split pages are never written to again.
func (t txn) logBucket() *bbolt.Bucket {
	b := t.bucket(bucketResultsLog)
	b.FillPercent = 1.0
	return b
}

func (t txn) coldBucket() *bbolt.Bucket { return t.bucket(bucketHistoryCold) }

// entry returns the raw entry at log index idx of the check ck, from the
// log or, once moved, from the cold history; nil if there is none.
func (t txn) entry(ck []byte, idx uint64) []byte {
	var k [8]byte
	binary.BigEndian.PutUint64(k[:], idx)
	if v := t.bucket(bucketResultsLog).Get(k[:]); v != nil {
		return v
	}
	return t.coldBucket().Get(historyKey(historyPrefix(ck), idx))
}

// lastLogIndex is the highest index in the log, 0 if it is empty.
func (t txn) lastLogIndex() uint64 {
	k, _ := t.bucket(bucketResultsLog).Cursor().Last()
	if len(k) != 8 {
		return 0
	}
	return binary.BigEndian.Uint64(k)
}

// Incidents and tasks.

// timeKey is t as 8 bytes that sort like t: Unix nanoseconds, big-endian,
// with the sign bit flipped so that times before 1970 sort first.
func timeKey(t time.Time) []byte {
	return u64(uint64(t.UnixNano()) ^ 1<<63)
}

// joinKey is a 0x00 b.
func joinKey(a, b string) []byte {
	k := make([]byte, 0, len(a)+1+len(b))
	k = append(k, a...)
	k = append(k, sep)
	return append(k, b...)
}

// seqKey is prefix 0x00 seq(8, big-endian).
func seqKey(prefix string, seq uint64) []byte {
	return historyKey(append([]byte(prefix), sep), seq)
}

// timeIDKey is timeKey(t) id.
func timeIDKey(t time.Time, id string) []byte {
	return append(timeKey(t), id...)
}

// indexEntry is one key of an index bucket.
type indexEntry struct {
	b          bucket
	key, value []byte
}

func (e indexEntry) sameKey(o indexEntry) bool {
	return bytes.Equal(e.b.name, o.b.name) && bytes.Equal(e.key, o.key)
}

// incidentIndex is every index entry of an incident.
func incidentIndex(inc store.Incident) []indexEntry {
	es := []indexEntry{
		{bucketIncidentsByTime, timeIDKey(inc.OpenedAt, inc.ID), joinKey(inc.AgentID, inc.Policy)},
		{bucketIncidentsByAgent, append(agentPrefix(inc.AgentID), timeIDKey(inc.OpenedAt, inc.ID)...), []byte(inc.Policy)},
	}
	if !store.IncidentTerminal(inc.State) {
		es = append(es, indexEntry{bucketOpenIncidents, joinKey(inc.AgentID, inc.Policy), []byte(inc.ID)})
	}
	return es
}

// taskIndex is every index entry of a task.
func taskIndex(tk store.Task) []indexEntry {
	byAgent, byIncident := seqKey(tk.AgentID, tk.Seq), seqKey(tk.IncidentID, tk.Seq)
	if tk.Seq == 0 {
		// A task awaiting approval has no seq yet: seq 0 then its id keeps
		// the keys unique (and sorted before every sealed task).
		byAgent, byIncident = append(byAgent, tk.ID...), append(byIncident, tk.ID...)
	}
	es := []indexEntry{
		{bucketTasksByTime, timeIDKey(tk.CreatedAt, tk.ID), []byte(tk.AgentID)},
		{bucketTasksByAgent, byAgent, []byte(tk.ID)},
		{bucketTasksByIncident, byIncident, []byte(tk.ID)},
	}
	if !store.TaskTerminal(tk.State) {
		es = append(es, indexEntry{bucketActiveTasks, timeIDKey(tk.CreatedAt, tk.ID), []byte(tk.AgentID)})
	}
	return es
}

// reindex replaces the index entries old of a record by nu, writing only
// what changed.
func (t txn) reindex(old, nu []indexEntry) error {
	for _, o := range old {
		if !slices.ContainsFunc(nu, o.sameKey) {
			if err := t.bucket(o.b).Delete(o.key); err != nil {
				return err
			}
		}
	}
	for _, n := range nu {
		if slices.ContainsFunc(old, func(o indexEntry) bool { return o.sameKey(n) && bytes.Equal(o.value, n.value) }) {
			continue
		}
		if err := t.bucket(n.b).Put(n.key, n.value); err != nil {
			return err
		}
	}
	return nil
}

// scan calls fn for every key of b with prefix (all keys for an empty
// prefix), in key order or, if reverse, in reverse key order; fn returns
// false to stop. k and v are only valid during the call.
func (t txn) scan(b bucket, prefix []byte, reverse bool, fn func(k, v []byte) (bool, error)) error {
	c := t.bucket(b).Cursor()
	var k, v []byte
	switch {
	case !reverse && len(prefix) == 0:
		k, v = c.First()
	case !reverse:
		k, v = c.Seek(prefix)
	case len(prefix) == 0:
		k, v = c.Last()
	default:
		// The last key with prefix is just before the first key past it.
		if end := prefixEnd(prefix); end == nil {
			k, v = c.Last()
		} else if k, _ = c.Seek(end); k == nil {
			k, v = c.Last()
		} else {
			k, v = c.Prev()
		}
	}
	for k != nil && bytes.HasPrefix(k, prefix) {
		more, err := fn(k, v)
		if err != nil || !more {
			return err
		}
		if reverse {
			k, v = c.Prev()
		} else {
			k, v = c.Next()
		}
	}
	return nil
}

func (t txn) incident(id string) (store.Incident, bool, error) {
	return getJSON[store.Incident](t.bucket(bucketIncidents), id)
}

func (t txn) incidentExists(id string) bool {
	return t.bucket(bucketIncidents).Get([]byte(id)) != nil
}

// putIncident writes inc, whose stored version (if any) is old, and moves
// its index entries. The caller has checked that the open index entry it
// takes is free.
func (t txn) putIncident(old *store.Incident, inc store.Incident) error {
	var was []indexEntry
	if old != nil {
		was = incidentIndex(*old)
	}
	if err := t.reindex(was, incidentIndex(inc)); err != nil {
		return err
	}
	return putJSON(t.bucket(bucketIncidents), inc.ID, inc)
}

// openIncidentID is the id of the open incident of (agent, policy), or "".
func (t txn) openIncidentID(agentID, policy string) string {
	return string(t.bucket(bucketOpenIncidents).Get(joinKey(agentID, policy)))
}

func (t txn) forEachIncident(fn func(k []byte, inc store.Incident) error) error {
	return t.bucket(bucketIncidents).ForEach(func(k, v []byte) error {
		var inc store.Incident
		if err := json.Unmarshal(v, &inc); err != nil {
			return fmt.Errorf("decode incident %q: %w", k, err)
		}
		return fn(k, inc)
	})
}

func (t txn) task(id string) (store.Task, bool, error) {
	return getJSON[store.Task](t.bucket(bucketTasks), id)
}

func (t txn) taskExists(id string) bool {
	return t.bucket(bucketTasks).Get([]byte(id)) != nil
}

// putTask writes tk, whose stored version (if any) is old, and moves its
// index entries.
func (t txn) putTask(old *store.Task, tk store.Task) error {
	var was []indexEntry
	if old != nil {
		was = taskIndex(*old)
	}
	if err := t.reindex(was, taskIndex(tk)); err != nil {
		return err
	}
	return putJSON(t.bucket(bucketTasks), tk.ID, tk)
}

func (t txn) forEachTask(fn func(k []byte, tk store.Task) error) error {
	return t.bucket(bucketTasks).ForEach(func(k, v []byte) error {
		var tk store.Task
		if err := json.Unmarshal(v, &tk); err != nil {
			return fmt.Errorf("decode task %q: %w", k, err)
		}
		return fn(k, tk)
	})
}

// taskSeq is the last task seq given to the agent (0 if none).
func (t txn) taskSeq(agentID string) (uint64, error) {
	raw := t.bucket(bucketTaskSeq).Get([]byte(agentID))
	if raw == nil {
		return 0, nil
	}
	if len(raw) != 8 {
		return 0, fmt.Errorf("corrupt task seq of agent %q: %d bytes, want 8", agentID, len(raw))
	}
	return binary.BigEndian.Uint64(raw), nil
}

func (t txn) putTaskSeq(agentID string, seq uint64) error {
	return t.bucket(bucketTaskSeq).Put([]byte(agentID), u64(seq))
}
