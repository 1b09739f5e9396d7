package bolt

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"

	"tend.dev/tend/controlplane/store"
	agentv1 "tend.dev/tend/proto/tend/agent/v1"
)

// CommitResults implements store.Store: all batches in one bbolt transaction.
//
// Per batch, results with seq at or below the agent's high-water mark
// (including earlier results of the same call) count as duplicates; the
// others go to the check's history (the oldest entry is deleted once the
// check has HistoryPerCheck of them) and update its state. A batch is
// refused on its own, with CommitOutcome.Err and nothing of it stored, when
// its agent is unknown (store.ErrNotFound) or revoked (store.ErrRevoked), or
// when a result is nil or has an empty check id or one with a NUL byte. The
// returned error is for the transaction as a whole: then nothing is stored.
func (s *Store) CommitResults(batches []store.ResultBatch) ([]store.CommitOutcome, error) {
	outs := make([]store.CommitOutcome, len(batches))
	if len(batches) == 0 {
		return outs, nil
	}
	// Validate and encode outside the write transaction, which other
	// writers wait for.
	encoded := make([][][]byte, len(batches))
	for i, b := range batches {
		encoded[i], outs[i].Err = encodeBatch(b)
	}
	now := s.now()
	err := s.update(func(t txn) error {
		for i, b := range batches {
			if outs[i].Err != nil {
				continue
			}
			out, err := s.commitBatch(t, b, encoded[i], now)
			if err != nil {
				return fmt.Errorf("commit results of agent %s: %w", b.AgentID, err)
			}
			outs[i] = out
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return outs, nil
}

func encodeBatch(b store.ResultBatch) ([][]byte, error) {
	if err := validAgentID(b.AgentID); err != nil {
		return nil, err
	}
	enc := make([][]byte, len(b.Results))
	for j, r := range b.Results {
		switch {
		case r == nil:
			return nil, fmt.Errorf("agent %s: result %d is nil", b.AgentID, j)
		case r.GetCheckId() == "":
			return nil, fmt.Errorf("agent %s: result %d (seq %d) has no check id", b.AgentID, j, r.GetSeq())
		case strings.IndexByte(r.GetCheckId(), sep) >= 0:
			return nil, fmt.Errorf("agent %s: result %d (seq %d): check id %q contains a NUL byte", b.AgentID, j, r.GetSeq(), r.GetCheckId())
		}
		raw, err := proto.Marshal(r)
		if err != nil {
			return nil, fmt.Errorf("agent %s: result %d (seq %d): encode: %w", b.AgentID, j, r.GetSeq(), err)
		}
		enc[j] = raw
	}
	return enc, nil
}

// commitBatch stores one batch. A non-nil error aborts the whole
// transaction; a refusal of this batch alone is in the outcome.
func (s *Store) commitBatch(t txn, b store.ResultBatch, enc [][]byte, now time.Time) (store.CommitOutcome, error) {
	var out store.CommitOutcome
	a, ok, err := t.agent(b.AgentID)
	if err != nil {
		return out, err
	}
	if !ok {
		out.Err = fmt.Errorf("results of agent %q: %w", b.AgentID, store.ErrNotFound)
		return out, nil
	}
	if a.Revoked {
		out.Err = fmt.Errorf("results of agent %q: %w", b.AgentID, store.ErrRevoked)
		return out, nil
	}
	c, err := t.counters(b.AgentID)
	if err != nil {
		return out, err
	}
	if c.highWater < b.After {
		// An earlier batch of this stream was not stored (its commit
		// failed): storing this one would move the high-water mark past
		// the missing results and they would be skipped as duplicates.
		out.Err = fmt.Errorf("results of agent %q: %w: high-water mark %d is below %d, the last seq of the previous batch", b.AgentID, store.ErrGap, c.highWater, b.After)
		out.AckedThrough = c.highWater
		return out, nil
	}
	for j, r := range b.Results {
		if r.GetSeq() <= c.highWater {
			out.Duplicates++
			continue
		}
		if err := s.putResult(t, b.AgentID, r, enc[j], now); err != nil {
			return out, err
		}
		c.highWater = r.GetSeq()
		c.stored++
		out.Stored++
	}
	if out.Stored > 0 {
		if err := t.putCounters(b.AgentID, c); err != nil {
			return out, err
		}
	}
	if b.OutboxDropped > a.OutboxDropped {
		a.OutboxDropped = b.OutboxDropped
		if err := t.putAgent(a); err != nil {
			return out, err
		}
	}
	out.AckedThrough = c.highWater
	return out, nil
}

// putResult appends one new result to its check's history, trimming the
// oldest entry when full, and makes it the check's latest state.
func (s *Store) putResult(t txn, agentID string, r *agentv1.CheckResult, raw []byte, now time.Time) error {
	ck := checkKey(agentID, r.GetCheckId())
	h, ok, err := t.stateHeader(ck)
	if err != nil {
		return err
	}
	at := now
	if ts := r.GetStartedAt(); ts != nil && ts.IsValid() {
		at = ts.AsTime()
	}
	switch {
	case !ok:
		h = stateHeader{status: int32(r.GetStatus()), sinceNanos: at.UnixNano(), streak: 1}
	case h.status != int32(r.GetStatus()):
		h.status, h.sinceNanos, h.streak = int32(r.GetStatus()), at.UnixNano(), 1
	default:
		h.streak++
	}
	prefix := historyPrefix(ck)
	// A loop, not an if: HistoryPerCheck may have been lowered since the
	// history was written.
	for h.historyLen >= s.historyPerCheck {
		deleted, err := t.deleteOldestHistory(prefix)
		if err != nil {
			return err
		}
		if !deleted {
			h.historyLen = 0
			break
		}
		h.historyLen--
	}
	if err := t.putHistory(prefix, r.GetSeq(), raw); err != nil {
		return err
	}
	h.historyLen++
	return t.putState(ck, h, raw)
}

// Counters implements store.Store; store.ErrNotFound for an unknown agent.
func (s *Store) Counters(agentID string) (store.AgentCounters, error) {
	var c counterRecord
	err := s.view(func(t txn) error {
		if !t.agentExists(agentID) {
			return fmt.Errorf("counters of agent %q: %w", agentID, store.ErrNotFound)
		}
		var err error
		c, err = t.counters(agentID)
		return err
	})
	return store.AgentCounters{ResultsStored: c.stored, HighWater: c.highWater}, err
}

// ListCheckStates implements store.Store, in (agent id, check id) order. An
// unknown agent has no checks (an empty list, no error).
func (s *Store) ListCheckStates(agentID string) ([]store.CheckState, error) {
	var prefix []byte
	if agentID != "" {
		prefix = agentPrefix(agentID)
	}
	var out []store.CheckState
	err := s.view(func(t txn) error {
		return t.forEachState(prefix, func(k, v []byte) error {
			st, err := decodeState(k, v)
			if err != nil {
				return err
			}
			out = append(out, st)
			return nil
		})
	})
	return out, err
}

func decodeState(k, v []byte) (store.CheckState, error) {
	agentID, checkID, ok := splitCheckKey(k)
	if !ok {
		return store.CheckState{}, fmt.Errorf("corrupt check state key %q", k)
	}
	h, raw, err := decodeStateHeader(v)
	if err != nil {
		return store.CheckState{}, fmt.Errorf("check %s/%s: %w", agentID, checkID, err)
	}
	last := new(agentv1.CheckResult)
	if err := proto.Unmarshal(raw, last); err != nil {
		return store.CheckState{}, fmt.Errorf("check %s/%s: decode latest result: %w", agentID, checkID, err)
	}
	return store.CheckState{
		AgentID:    agentID,
		CheckID:    checkID,
		Last:       last,
		Since:      time.Unix(0, h.sinceNanos),
		Streak:     h.streak,
		HistoryLen: h.historyLen,
	}, nil
}

// ListResults implements store.Store. An unknown agent or check has no
// results (an empty list, no error).
func (s *Store) ListResults(agentID, checkID string, limit int) ([]*agentv1.CheckResult, error) {
	if agentID == "" || checkID == "" {
		return nil, errors.New("list results: agent id and check id are required")
	}
	var raws [][]byte
	if err := s.view(func(t txn) error {
		raws = t.history(historyPrefix(checkKey(agentID, checkID)), limit)
		return nil
	}); err != nil {
		return nil, err
	}
	out := make([]*agentv1.CheckResult, len(raws))
	for i, raw := range raws {
		r := new(agentv1.CheckResult)
		if err := proto.Unmarshal(raw, r); err != nil {
			return nil, fmt.Errorf("list results of %s/%s: decode: %w", agentID, checkID, err)
		}
		out[i] = r
	}
	return out, nil
}
