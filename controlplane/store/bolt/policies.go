package bolt

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"tend.dev/tend/controlplane/store"
)

// Policy change actions.
const (
	ActionCreated    = "created"
	ActionConfigured = "configured"
	ActionUnchanged  = "unchanged"
)

// ApplyPolicies implements store.Store. Every spec must be JSON; it is stored
// in canonical form (object keys sorted, no insignificant space, numbers as
// written), and two specs are the same when their canonical forms are equal.
// Versions never repeat for a name, even across a delete. Nothing is written
// if any policy is invalid (empty or repeated name, spec not JSON).
func (s *Store) ApplyPolicies(ps []store.Policy, now time.Time) ([]store.PolicyChange, error) {
	specs := make([][]byte, len(ps))
	seen := make(map[string]bool, len(ps))
	for i, p := range ps {
		if p.Name == "" {
			return nil, fmt.Errorf("apply policies: policy %d has no name", i+1)
		}
		if seen[p.Name] {
			return nil, fmt.Errorf("apply policies: policy %q appears twice", p.Name)
		}
		seen[p.Name] = true
		spec, err := canonicalJSON(p.Spec)
		if err != nil {
			return nil, fmt.Errorf("apply policies: policy %q: spec is not valid JSON: %w", p.Name, err)
		}
		specs[i] = spec
	}
	changes := make([]store.PolicyChange, len(ps))
	err := s.update(func(t txn) error {
		for i, p := range ps {
			old, ok, err := t.policy(p.Name)
			if err != nil {
				return err
			}
			if ok && bytes.Equal(old.Spec, specs[i]) {
				changes[i] = store.PolicyChange{Name: p.Name, Version: old.Version, Action: ActionUnchanged}
				continue
			}
			v := max(old.Version, t.lastPolicyVersion(p.Name)) + 1
			if err := t.putPolicy(store.Policy{Name: p.Name, Version: v, Spec: specs[i], UpdatedAt: now}); err != nil {
				return err
			}
			if err := t.putLastPolicyVersion(p.Name, v); err != nil {
				return err
			}
			action := ActionConfigured
			if !ok {
				action = ActionCreated
			}
			changes[i] = store.PolicyChange{Name: p.Name, Version: v, Action: action}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return changes, nil
}

// GetPolicy returns the named policy or store.ErrNotFound.
func (s *Store) GetPolicy(name string) (store.Policy, error) {
	var p store.Policy
	err := s.view(func(t txn) error {
		var ok bool
		var err error
		p, ok, err = t.policy(name)
		if err == nil && !ok {
			err = fmt.Errorf("policy %q: %w", name, store.ErrNotFound)
		}
		return err
	})
	return p, err
}

// ListPolicies returns every policy in name order.
func (s *Store) ListPolicies() ([]store.Policy, error) {
	var out []store.Policy
	err := s.view(func(t txn) error {
		return t.forEachPolicy(func(p store.Policy) error {
			out = append(out, p)
			return nil
		})
	})
	return out, err
}

// DeletePolicy deletes the named policy, or returns store.ErrNotFound.
func (s *Store) DeletePolicy(name string) error {
	return s.update(func(t txn) error {
		_, ok, err := t.policy(name)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("delete policy %q: %w", name, store.ErrNotFound)
		}
		return t.deletePolicy(name)
	})
}

// canonicalJSON re-encodes one JSON value with sorted object keys, no
// insignificant whitespace and no HTML escaping; numbers keep their text.
func canonicalJSON(raw []byte) ([]byte, error) {
	if len(bytes.TrimSpace(raw)) == 0 {
		return nil, errors.New("empty")
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("trailing data after the JSON value")
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}
