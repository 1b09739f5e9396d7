package bolt

import (
	"errors"
	"fmt"
	"slices"
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
// others are appended to the results log, become their check's latest
// state, and join its history (of which the last HistoryPerCheck are kept).
// A batch is refused on its own, with CommitOutcome.Err and nothing of it
// stored, when its agent is unknown (store.ErrNotFound) or revoked
// (store.ErrRevoked), or when a result is nil or has an empty check id or
// one with a NUL byte. The returned error is for the transaction as a
// whole: then nothing is stored.
//
// The same transaction writes the checkpoints of checks that changed more
// than CheckpointInterval ago and trims the head of the log (see
// results_log.go).
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
	r := &s.res
	r.commitMu.Lock()
	defer r.commitMu.Unlock()
	ct := r.begin(now)
	err := s.update(func(t txn) error {
		ct.bind(t)
		for i, b := range batches {
			if outs[i].Err != nil {
				continue
			}
			out, err := s.commitBatch(t, ct, b, encoded[i], now)
			if err != nil {
				return fmt.Errorf("commit results of agent %s: %w", b.AgentID, err)
			}
			outs[i] = out
		}
		return ct.finish(false)
	})
	if err != nil {
		return nil, err
	}
	r.apply(ct)
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
		if len(b.Encoded) == len(b.Results) {
			enc[j] = b.Encoded[j]
			continue
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
func (s *Store) commitBatch(t txn, ct *commitTx, b store.ResultBatch, enc [][]byte, now time.Time) (store.CommitOutcome, error) {
	var out store.CommitOutcome
	a, ok, err := t.agentForIngest(b.AgentID)
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
		if err := ct.putResult(b.AgentID, r, enc[j], now); err != nil {
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
		full, _, err := t.agent(b.AgentID)
		if err != nil {
			return out, err
		}
		full.OutboxDropped = b.OutboxDropped
		if err := t.putAgent(full); err != nil {
			return out, err
		}
	}
	out.AckedThrough = c.highWater
	return out, nil
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
	r := &s.res
	var out []store.CheckState
	err := s.readResults(func() error {
		var err error
		out, err = s.listCheckStates(r, agentID)
		return err
	})
	if err != nil {
		return nil, err
	}
	if len(out) == 0 {
		return nil, nil
	}
	return out, nil
}

// listCheckStates is ListCheckStates under r.mu.
func (s *Store) listCheckStates(r *resultsState, agentID string) ([]store.CheckState, error) {
	var ms []*checkMem
	add := func(checks map[string]*checkMem) {
		for _, m := range checks {
			ms = append(ms, m)
		}
	}
	if agentID != "" {
		add(r.checks[agentID])
	} else {
		for _, checks := range r.checks {
			add(checks)
		}
	}
	slices.SortFunc(ms, func(a, b *checkMem) int {
		if c := strings.Compare(a.agentID, b.agentID); c != 0 {
			return c
		}
		return strings.Compare(a.checkID, b.checkID)
	})
	out := make([]store.CheckState, 0, len(ms))
	err := s.view(func(t txn) error {
		for _, m := range ms {
			e, err := t.checkEntry(m.agentID, m.checkID, m.latest)
			if err != nil {
				return err
			}
			last := new(agentv1.CheckResult)
			if err := proto.Unmarshal(e.result, last); err != nil {
				return fmt.Errorf("check %s/%s: decode latest result: %w", m.agentID, m.checkID, err)
			}
			out = append(out, store.CheckState{
				AgentID:    m.agentID,
				CheckID:    m.checkID,
				Last:       last,
				Since:      time.Unix(0, m.sinceNanos),
				Streak:     m.streak,
				HistoryLen: m.kept,
			})
		}
		return nil
	})
	return out, err
}

// ListResults implements store.Store. An unknown agent or check has no
// results (an empty list, no error).
func (s *Store) ListResults(agentID, checkID string, limit int) ([]*agentv1.CheckResult, error) {
	if agentID == "" || checkID == "" {
		return nil, errors.New("list results: agent id and check id are required")
	}
	r := &s.res
	var out []*agentv1.CheckResult
	err := s.readResults(func() error {
		out = nil
		m := r.checks[agentID][checkID]
		if m == nil {
			return nil
		}
		n := m.kept
		if limit > 0 && uint64(limit) < n {
			n = uint64(limit)
		}
		out = make([]*agentv1.CheckResult, n)
		return s.view(func(t txn) error {
			idx := m.latest
			for i := int(n) - 1; i >= 0; i-- {
				e, err := t.checkEntry(agentID, checkID, idx)
				if err != nil {
					return err
				}
				res := new(agentv1.CheckResult)
				if err := proto.Unmarshal(e.result, res); err != nil {
					return fmt.Errorf("decode: %w", err)
				}
				out[i] = res
				idx = e.prev
			}
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("list results of %s/%s: %w", agentID, checkID, err)
	}
	return out, nil
}
