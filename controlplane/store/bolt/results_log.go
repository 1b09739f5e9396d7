package bolt

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"

	agentv1 "tend.dev/tend/proto/tend/agent/v1"
)

// Results are stored as an append-only log, so that a group commit writes a
// few sequential pages instead of two random B+tree leaves per result:
//
//   - results_log: every stored result, keyed by a global log index, with
//     its check's ids, its place in the check's history and the log index
//     of the check's previous result (a back-pointer chain);
//   - in memory: each check's state (status, since, streak, how many
//     results it has, how many of them are kept, the index of its latest),
//     tens of bytes per check;
//   - check_state: a checkpoint of those states. A check's record is
//     rewritten CheckpointInterval after it changed (so each check costs at
//     most one random write per interval, whatever its rate), and meta's
//     results_checkpoint is the log index up to which every record is
//     current. Open loads the records and replays the log after that
//     index: nothing acknowledged is lost in a crash.
//   - history_cold: the head of the log is trimmed in order, in the commits
//     the ingest makes anyway, once the log holds more than
//     (HistoryPerCheck + slack) entries per check. A trimmed entry that is
//     still among its check's last HistoryPerCheck (a check slower than
//     most) is moved to its check's cold history, once; the others are
//     dropped. So a check's history is exactly its last HistoryPerCheck
//     results, in the log or in the cold bucket, reached from its latest
//     entry through the chain.

// checkMem is the in-memory state of one check. Its checkRecord is guarded
// by resultsState.mu; the other fields belong to the committer
// (resultsState.commitMu).
type checkMem struct {
	agentID, checkID string
	checkRecord

	dirtySince uint64 // first log index its check_state record lacks; 0: clean
	dirtyAt    int64  // when it became dirty, Unix nanoseconds
	written    uint64 // number of the commit that last wrote its record
}

func (m *checkMem) key() []byte { return checkKey(m.agentID, m.checkID) }

// resultsState is the results part of a Store.
type resultsState struct {
	// commitMu serialises the transactions that write results and
	// checkpoints with the updates of the in-memory state that follow them.
	commitMu sync.Mutex
	// mu guards checks and every checkMem's checkRecord: the committer
	// changes them only after its transaction committed.
	mu     sync.RWMutex
	checks map[string]map[string]*checkMem // agent id → check id → state
	count  int                             // checks in checks

	// Committer only (commitMu).
	historyPerCheck uint64
	logSlack        uint64 // log entries per check kept beyond historyPerCheck
	checkpointEvery time.Duration
	next            uint64      // next log index
	checkpoint      uint64      // results_checkpoint as stored
	dirty           []*checkMem // checks with an outdated record, by dirtySince
	commits         uint64      // commits begun
}

// commitTx is one transaction's changes to the results state, applied to
// memory once it committed.
type commitTx struct {
	r      *resultsState
	t      txn
	log    *bbolt.Bucket
	now    time.Time
	n      uint64 // this commit's number
	next   uint64
	stored int
	staged map[*checkMem]*stagedCheck
	order  []*checkMem          // staged checks, by their first log index here
	added  map[string]*checkMem // checks new in this commit, by checkKey
	popped int                  // dirty checks whose record this commit wrote
	ckpt   uint64               // results_checkpoint after this commit

	historyPerCheck uint64
}

type stagedCheck struct {
	rec   checkRecord
	first uint64 // its first log index in this commit
}

func (r *resultsState) begin(now time.Time) *commitTx {
	r.commits++
	return &commitTx{
		r: r, now: now, n: r.commits, next: r.next,
		staged:          map[*checkMem]*stagedCheck{},
		added:           map[string]*checkMem{},
		ckpt:            r.checkpoint,
		historyPerCheck: r.historyPerCheck,
	}
}

func (ct *commitTx) bind(t txn) {
	ct.t = t
	ct.log = t.logBucket()
}

// lookup returns the check's state as this transaction sees it, nil if the
// check has none.
func (ct *commitTx) lookup(agentID, checkID []byte) (*checkMem, checkRecord) {
	m := ct.r.checks[string(agentID)][string(checkID)]
	if m == nil {
		if m = ct.added[string(checkKey(string(agentID), string(checkID)))]; m == nil {
			return nil, checkRecord{}
		}
	}
	if sc := ct.staged[m]; sc != nil {
		return m, sc.rec
	}
	return m, m.checkRecord
}

// putResult appends one new result to the log and makes it its check's
// latest state.
func (ct *commitTx) putResult(agentID string, r *agentv1.CheckResult, raw []byte, now time.Time) error {
	checkID := r.GetCheckId()
	m := ct.r.checks[agentID][checkID]
	if m == nil {
		ck := string(checkKey(agentID, checkID))
		if m = ct.added[ck]; m == nil {
			m = &checkMem{agentID: agentID, checkID: checkID}
			ct.added[ck] = m
		}
	}
	sc := ct.staged[m]
	if sc == nil {
		sc = &stagedCheck{rec: m.checkRecord, first: ct.next}
		ct.staged[m] = sc
		ct.order = append(ct.order, m)
	}
	at := now
	if ts := r.GetStartedAt(); ts != nil && ts.IsValid() {
		at = ts.AsTime()
	}
	idx := ct.next
	ct.next++
	rec := &sc.rec
	prev := rec.latest
	rec.advance(int32(r.GetStatus()), at.UnixNano(), min(rec.kept+1, ct.historyPerCheck))
	entry := encodeLogEntry(prev, rec.count, rec.kept, at.UnixNano(), rec.status, agentID, checkID, raw)
	rec.latest = idx
	ct.stored++
	return ct.log.Put(u64(idx), entry)
}

// advance counts one more result in the record, with its new history
// length; the caller sets latest.
func (rec *checkRecord) advance(status int32, atNanos int64, kept uint64) {
	if rec.count == 0 || rec.status != status {
		rec.status, rec.sinceNanos, rec.streak = status, atNanos, 1
	} else {
		rec.streak++
	}
	rec.count++
	rec.kept = kept
}

// finish writes the checkpoints that are due (all of them if all) and the
// checkpoint index, then trims the log.
func (ct *commitTx) finish(all bool) error {
	r, t := ct.r, ct.t
	cutoff := ct.now.Add(-r.checkpointEvery).UnixNano()
	// At most one record per result stored (and some) per commit, which
	// keeps up (a record is due only after a result), and spreads the
	// records of checks that changed together over several commits
	// instead of making one commit long.
	budget := len(r.dirty)
	if !all {
		budget = min(budget, ct.stored+64)
	}
	for ct.popped < budget && (all || r.dirty[ct.popped].dirtyAt <= cutoff) {
		m := r.dirty[ct.popped]
		if err := ct.writeRecord(m); err != nil {
			return err
		}
		ct.popped++
	}
	if all {
		for _, m := range ct.order {
			if m.written != ct.n {
				if err := ct.writeRecord(m); err != nil {
					return err
				}
			}
		}
	}
	// Every record is current up to the first entry a dirty one lacks.
	ckpt := ct.next - 1
	if ct.popped < len(r.dirty) {
		ckpt = r.dirty[ct.popped].dirtySince - 1
	} else {
		for _, m := range ct.order {
			if m.dirtySince == 0 && m.written != ct.n {
				ckpt = ct.staged[m].first - 1
				break
			}
		}
	}
	if ckpt != r.checkpoint {
		if err := t.putResultsCheckpoint(ckpt); err != nil {
			return err
		}
	}
	ct.ckpt = ckpt
	return ct.trim(ckpt)
}

// writeRecord writes the check's record as of this transaction.
func (ct *commitTx) writeRecord(m *checkMem) error {
	rec := m.checkRecord
	if sc := ct.staged[m]; sc != nil {
		rec = sc.rec
	}
	m.written = ct.n // harmless if the transaction fails: n is not reused
	return ct.t.putCheckRecord(m.key(), rec)
}

// trim drops entries from the head of the log, up to index limit, while it
// holds more than (historyPerCheck + logSlack) entries per check, moving
// those still in their check's history to the cold bucket. It does at most
// twice as many entries as this commit added (and some), so that it keeps
// up without making one commit long.
func (ct *commitTx) trim(limit uint64) error {
	r := ct.r
	checks := uint64(r.count + len(ct.added))
	target := (r.historyPerCheck + r.logSlack) * checks
	budget := 2*ct.stored + 64
	c := ct.log.Cursor()
	for ; budget > 0; budget-- {
		k, v := c.First()
		if len(k) != 8 {
			return nil
		}
		idx := binary.BigEndian.Uint64(k)
		if idx > limit || ct.next-idx <= target {
			return nil
		}
		e, err := decodeLogEntry(v)
		if err != nil {
			return fmt.Errorf("results log entry %d: %w", idx, err)
		}
		if m, rec := ct.lookup(e.agentID, e.checkID); m != nil && e.ordinal+rec.kept > rec.count {
			if err := ct.moveCold(m, rec, idx, v); err != nil {
				return err
			}
		}
		if err := c.Delete(); err != nil {
			return err
		}
	}
	return nil
}

// moveCold copies a log entry still in its check's history to the cold
// bucket, and drops the check's cold entries that no longer are.
func (ct *commitTx) moveCold(m *checkMem, rec checkRecord, idx uint64, v []byte) error {
	cold := ct.t.coldBucket()
	prefix := historyPrefix(m.key())
	c := cold.Cursor()
	for {
		k, cv := c.Seek(prefix)
		if k == nil || !bytes.HasPrefix(k, prefix) {
			break
		}
		e, err := decodeLogEntry(cv)
		if err != nil {
			return fmt.Errorf("cold history entry %q: %w", k, err)
		}
		if e.ordinal+rec.kept > rec.count {
			break
		}
		if err := c.Delete(); err != nil {
			return err
		}
	}
	return cold.Put(historyKey(prefix, idx), bytes.Clone(v))
}

// apply makes a committed transaction's changes visible.
func (r *resultsState) apply(ct *commitTx) {
	r.mu.Lock()
	for m, sc := range ct.staged {
		m.checkRecord = sc.rec
	}
	for _, m := range ct.added {
		checks := r.checks[m.agentID]
		if checks == nil {
			checks = map[string]*checkMem{}
			r.checks[m.agentID] = checks
		}
		checks[m.checkID] = m
	}
	r.count += len(ct.added)
	r.mu.Unlock()

	for _, m := range r.dirty[:ct.popped] {
		m.dirtySince = 0
	}
	r.dirty = append(r.dirty[:0], r.dirty[ct.popped:]...)
	for _, m := range ct.order {
		if m.dirtySince == 0 && m.written != ct.n {
			m.dirtySince, m.dirtyAt = ct.staged[m].first, ct.now.UnixNano()
			r.dirty = append(r.dirty, m)
		}
	}
	r.next = ct.next
	r.checkpoint = ct.ckpt
}

// flushResults writes every outdated check record (at Close).
func (s *Store) flushResults() error {
	r := &s.res
	r.commitMu.Lock()
	defer r.commitMu.Unlock()
	if len(r.dirty) == 0 {
		return nil
	}
	ct := r.begin(s.now())
	if err := s.update(func(t txn) error {
		ct.bind(t)
		return ct.finish(true)
	}); err != nil {
		return fmt.Errorf("checkpoint check states: %w", err)
	}
	r.apply(ct)
	return nil
}

// loadResults reads the check records and replays the log after the
// checkpoint (at Open).
func (s *Store) loadResults() error {
	r := &s.res
	r.checks = map[string]map[string]*checkMem{}
	now := s.now().UnixNano()
	return s.view(func(t txn) error {
		ckpt, err := t.resultsCheckpoint()
		if err != nil {
			return err
		}
		err = t.forEachState(nil, func(k, v []byte) error {
			agentID, checkID, ok := splitCheckKey(k)
			if !ok || agentID == "" || checkID == "" {
				return fmt.Errorf("corrupt check state key %q", k)
			}
			rec, err := decodeCheckRecord(v)
			if err != nil {
				return fmt.Errorf("check %s/%s: %w", agentID, checkID, err)
			}
			r.add(&checkMem{agentID: agentID, checkID: checkID, checkRecord: rec})
			return nil
		})
		if err != nil {
			return err
		}
		next := max(ckpt, t.lastLogIndex()) + 1
		c := t.bucket(bucketResultsLog).Cursor()
		for k, v := c.Seek(u64(ckpt + 1)); k != nil; k, v = c.Next() {
			idx := binary.BigEndian.Uint64(k)
			e, err := decodeLogEntry(v)
			if err != nil {
				return fmt.Errorf("results log entry %d: %w", idx, err)
			}
			m := r.checks[string(e.agentID)][string(e.checkID)]
			if m == nil {
				m = &checkMem{agentID: string(e.agentID), checkID: string(e.checkID)}
				r.add(m)
			}
			if idx <= m.latest {
				continue // in its record already
			}
			if e.ordinal != m.count+1 || e.prev != m.latest {
				return fmt.Errorf("results log entry %d of %s/%s: ordinal %d after entry %d, want %d after %d",
					idx, e.agentID, e.checkID, e.ordinal, e.prev, m.count+1, m.latest)
			}
			m.advance(e.status, e.atNanos, e.kept)
			m.latest = idx
			if m.dirtySince == 0 {
				m.dirtySince, m.dirtyAt = idx, now
				r.dirty = append(r.dirty, m)
			}
		}
		for _, checks := range r.checks {
			for _, m := range checks {
				if m.latest >= next {
					return fmt.Errorf("check %s/%s: latest entry %d is past the log's end %d", m.agentID, m.checkID, m.latest, next-1)
				}
			}
		}
		r.next, r.checkpoint = next, ckpt
		return nil
	})
}

func (r *resultsState) add(m *checkMem) {
	checks := r.checks[m.agentID]
	if checks == nil {
		checks = map[string]*checkMem{}
		r.checks[m.agentID] = checks
	}
	checks[m.checkID] = m
	r.count++
}

// errEntryMissing: a check's history entry is in neither the log nor the
// cold history.
var errEntryMissing = errors.New("missing")

// readResults runs fn, a read of check states (under r.mu) and of their
// entries (in a read transaction). A results commit is visible to new read
// transactions before its apply updates the states, so fn may see a state
// older than its transaction, whose oldest history entries that commit
// dropped: on a missing entry, fn runs again with no commit in flight
// (commitMu), where a missing entry is a real one. fn must reset what it
// returns.
func (s *Store) readResults(fn func() error) error {
	r := &s.res
	err := func() error {
		r.mu.RLock()
		defer r.mu.RUnlock()
		return fn()
	}()
	if !errors.Is(err, errEntryMissing) {
		return err
	}
	r.commitMu.Lock()
	defer r.commitMu.Unlock()
	r.mu.RLock()
	defer r.mu.RUnlock()
	return fn()
}

// checkEntry reads and decodes the entry at log index idx of a check.
func (t txn) checkEntry(agentID, checkID string, idx uint64) (logEntry, error) {
	v := t.entry(checkKey(agentID, checkID), idx)
	if v == nil {
		return logEntry{}, fmt.Errorf("check %s/%s: history entry %d %w", agentID, checkID, idx, errEntryMissing)
	}
	e, err := decodeLogEntry(v)
	if err != nil {
		return e, fmt.Errorf("check %s/%s: entry %d: %w", agentID, checkID, idx, err)
	}
	if string(e.agentID) != agentID || string(e.checkID) != checkID {
		return e, fmt.Errorf("check %s/%s: entry %d is of %s/%s", agentID, checkID, idx, e.agentID, e.checkID)
	}
	return e, nil
}

// verifyResults checks that every check's history is whole: kept entries,
// reachable from its latest, of the check, with consecutive ordinals; and
// that every record and entry decodes.
func (s *Store) verifyResults(t txn) []error {
	r := &s.res
	var errs []error
	errs = append(errs, t.forEachState(nil, func(k, v []byte) error {
		if _, err := decodeCheckRecord(v); err != nil {
			return fmt.Errorf("check %q: %w", k, err)
		}
		if _, _, ok := splitCheckKey(k); !ok {
			return fmt.Errorf("check state key %q has no separator", k)
		}
		return nil
	}))
	for _, b := range []bucket{bucketResultsLog, bucketHistoryCold} {
		errs = append(errs, t.bucket(b).ForEach(func(k, v []byte) error {
			if _, err := decodeLogEntry(v); err != nil {
				return fmt.Errorf("%s %q: %w", b.name, k, err)
			}
			return nil
		}))
	}
	for _, checks := range r.checks {
		for _, m := range checks {
			errs = append(errs, verifyChain(t, m))
		}
	}
	return errs
}

func verifyChain(t txn, m *checkMem) error {
	idx, ordinal := m.latest, m.count
	for i := uint64(0); i < m.kept; i++ {
		e, err := t.checkEntry(m.agentID, m.checkID, idx)
		if err != nil {
			return fmt.Errorf("state says %d results in history, found %d: %w", m.kept, i, err)
		}
		if e.ordinal != ordinal {
			return fmt.Errorf("check %s/%s: entry %d has ordinal %d, want %d", m.agentID, m.checkID, idx, e.ordinal, ordinal)
		}
		if err := proto.Unmarshal(e.result, new(agentv1.CheckResult)); err != nil {
			return fmt.Errorf("check %s/%s: entry %d: decode: %w", m.agentID, m.checkID, idx, err)
		}
		idx, ordinal = e.prev, ordinal-1
	}
	return nil
}

// upgradeResultsLog (schema 1 → 2) moves every check's history to the cold
// bucket as log entries with their chain, and rewrites its state as a
// checkRecord. The log starts empty, after the indexes given here.
func upgradeResultsLog(tx *bbolt.Tx) error {
	states, hist, meta := tx.Bucket(bucketCheckState.name), tx.Bucket(bucketHistory.name), tx.Bucket(bucketMeta.name)
	if states == nil || hist == nil {
		return errors.New("schema 1 store without its check_state or history bucket")
	}
	cold, err := tx.CreateBucketIfNotExists(bucketHistoryCold.name)
	if err != nil {
		return err
	}
	type rewrite struct {
		key []byte
		rec checkRecord
	}
	var (
		idx      uint64
		rewrites []rewrite
	)
	err = states.ForEach(func(k, v []byte) error {
		agentID, checkID, ok := splitCheckKey(k)
		if !ok {
			return fmt.Errorf("corrupt check state key %q", k)
		}
		h, latest, err := decodeStateHeader(v)
		if err != nil {
			return fmt.Errorf("check %s/%s: %w", agentID, checkID, err)
		}
		rec := checkRecord{status: h.status, sinceNanos: h.sinceNanos, streak: h.streak}
		prefix := historyPrefix(k)
		put := func(raw []byte) error {
			var r agentv1.CheckResult
			if err := proto.Unmarshal(raw, &r); err != nil {
				return fmt.Errorf("check %s/%s: decode history: %w", agentID, checkID, err)
			}
			idx++
			rec.count++
			var at int64
			if ts := r.GetStartedAt(); ts != nil && ts.IsValid() {
				at = ts.AsTime().UnixNano()
			}
			e := encodeLogEntry(rec.latest, rec.count, rec.count, at, int32(r.GetStatus()), agentID, checkID, raw)
			rec.latest = idx
			return cold.Put(historyKey(prefix, idx), e)
		}
		c := hist.Cursor()
		for hk, hv := c.Seek(prefix); hk != nil && bytes.HasPrefix(hk, prefix); hk, hv = c.Next() {
			if err := put(hv); err != nil {
				return err
			}
		}
		if rec.count == 0 {
			// No history (cannot happen with schema 1's writer): keep the
			// latest result as a history of one.
			if err := put(latest); err != nil {
				return err
			}
		}
		rec.kept = rec.count
		rewrites = append(rewrites, rewrite{bytes.Clone(k), rec})
		return nil
	})
	if err != nil {
		return err
	}
	for _, rw := range rewrites {
		if err := states.Put(rw.key, rw.rec.encode()); err != nil {
			return err
		}
	}
	if err := tx.DeleteBucket(bucketHistory.name); err != nil {
		return err
	}
	return meta.Put(keyResultsCheckpoint, u64(idx))
}
