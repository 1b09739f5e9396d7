package bolt

import (
	"crypto/subtle"
	"errors"
	"fmt"
	"strings"
	"time"

	"tend.dev/tend/controlplane/store"
)

// CreateToken stores a new join token. It refuses an existing id
// (store.ErrExists), an empty id or secret hash, and zero uses. A zero
// ExpiresAt means the token never expires.
func (s *Store) CreateToken(tok store.Token) error {
	switch {
	case tok.ID == "":
		return errors.New("create token: empty id")
	case len(tok.SecretHash) == 0:
		return fmt.Errorf("create token %q: empty secret hash", tok.ID)
	case tok.Uses == 0:
		return fmt.Errorf("create token %q: uses must be at least 1", tok.ID)
	}
	return s.update(func(t txn) error {
		_, ok, err := t.token(tok.ID)
		if err != nil {
			return err
		}
		if ok {
			return fmt.Errorf("create token %q: %w", tok.ID, store.ErrExists)
		}
		return t.putToken(tok)
	})
}

// EnrollAgent implements store.Store. The checks run in this order, and the
// first that fails aborts the transaction (the token keeps its use): token
// known and secret hash equal (else ErrTokenUnknown, the same for both so
// that a caller cannot probe token ids), not expired, a use left, the id
// never used, the name not held by a non-revoked agent.
func (s *Store) EnrollAgent(tokenID string, secretHash []byte, now time.Time, a store.Agent) error {
	if err := validAgentID(a.ID); err != nil {
		return fmt.Errorf("enroll agent: %w", err)
	}
	if a.Name == "" {
		return fmt.Errorf("enroll agent %s: empty name", a.ID)
	}
	return s.update(func(t txn) error {
		tok, ok, err := t.token(tokenID)
		if err != nil {
			return err
		}
		if !ok || subtle.ConstantTimeCompare(tok.SecretHash, secretHash) != 1 {
			return fmt.Errorf("join token %q: %w", tokenID, store.ErrTokenUnknown)
		}
		if !tok.ExpiresAt.IsZero() && !now.Before(tok.ExpiresAt) {
			return fmt.Errorf("join token %q expired at %s: create a new one with tendctl token create: %w",
				tokenID, tok.ExpiresAt.UTC().Format(time.RFC3339), store.ErrTokenExpired)
		}
		if tok.UsedCount >= tok.Uses {
			return fmt.Errorf("join token %q: all %d uses consumed: %w", tokenID, tok.Uses, store.ErrTokenUsedUp)
		}
		if t.agentExists(a.ID) {
			return fmt.Errorf("enroll agent id %q: %w (agent ids are never reused)", a.ID, store.ErrExists)
		}
		if err := t.checkNameFree(a.Name, a.ID); err != nil {
			return err
		}
		tok.UsedCount++
		if err := t.putToken(tok); err != nil {
			return err
		}
		if a.EnrolledAt.IsZero() {
			a.EnrolledAt = now
		}
		if err := t.putAgent(a); err != nil {
			return err
		}
		if err := t.putAgentName(a.Name, a.ID); err != nil {
			return err
		}
		return t.putCounters(a.ID, counterRecord{})
	})
}

// checkNameFree returns ErrNameTaken if name is held by a non-revoked agent
// other than id.
func (t txn) checkNameFree(name, id string) error {
	holder := t.agentIDByName(name)
	if holder == "" || holder == id {
		return nil
	}
	h, ok, err := t.agent(holder)
	if err != nil {
		return err
	}
	if ok && !h.Revoked {
		return fmt.Errorf("agent name %q is held by agent %s: revoke it first (tendctl delete agent %s) or choose another name: %w",
			name, holder, name, store.ErrNameTaken)
	}
	return nil
}

func validAgentID(id string) error {
	switch {
	case id == "":
		return errors.New("empty agent id")
	case strings.IndexByte(id, sep) >= 0:
		return fmt.Errorf("agent id %q contains a NUL byte", id)
	}
	return nil
}

// GetAgent returns the agent with that id, or store.ErrNotFound.
func (s *Store) GetAgent(id string) (store.Agent, error) {
	var a store.Agent
	err := s.view(func(t txn) error {
		var ok bool
		var err error
		a, ok, err = t.agent(id)
		if err == nil && !ok {
			err = fmt.Errorf("agent %q: %w", id, store.ErrNotFound)
		}
		return err
	})
	return a, err
}

// GetAgentByName returns the agent that last took that name (which may be
// revoked), or store.ErrNotFound.
func (s *Store) GetAgentByName(name string) (store.Agent, error) {
	var a store.Agent
	err := s.view(func(t txn) error {
		id := t.agentIDByName(name)
		var ok bool
		var err error
		if id != "" {
			a, ok, err = t.agent(id)
		}
		if err == nil && !ok {
			err = fmt.Errorf("agent named %q: %w", name, store.ErrNotFound)
		}
		return err
	})
	return a, err
}

// ListAgents returns every agent ever enrolled, revoked ones included, in id
// order.
func (s *Store) ListAgents() ([]store.Agent, error) {
	var out []store.Agent
	err := s.view(func(t txn) error {
		return t.forEachAgent(func(a store.Agent) error {
			out = append(out, a)
			return nil
		})
	})
	return out, err
}

// UpdateAgent implements store.Store.
func (s *Store) UpdateAgent(id string, fn func(*store.Agent) error) error {
	return s.update(func(t txn) error {
		old, ok, err := t.agent(id)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("update agent %q: %w", id, store.ErrNotFound)
		}
		// A second decode: fn gets its own copy (maps included) and old
		// stays as stored.
		nu, _, err := t.agent(id)
		if err != nil {
			return err
		}
		if err := fn(&nu); err != nil {
			return err
		}
		return t.replaceAgent(old, nu)
	})
}

// PutAgents implements store.Store.
func (s *Store) PutAgents(agents []store.Agent) error {
	if len(agents) == 0 {
		return nil
	}
	return s.update(func(t txn) error {
		for _, a := range agents {
			old, ok, err := t.agent(a.ID)
			if err != nil {
				return err
			}
			if !ok {
				return fmt.Errorf("put agent %q: %w (agents are created by enrollment only)", a.ID, store.ErrNotFound)
			}
			if err := t.replaceAgent(old, a); err != nil {
				return err
			}
		}
		return nil
	})
}

// replaceAgent writes nu over old, keeping the invariants: the id does not
// change, revocation sticks, OutboxDropped does not go down, names stay
// unique among non-revoked agents.
func (t txn) replaceAgent(old, nu store.Agent) error {
	if nu.ID != old.ID {
		return fmt.Errorf("update agent %q: the id cannot change (to %q)", old.ID, nu.ID)
	}
	if nu.Name == "" {
		return fmt.Errorf("update agent %q: empty name", old.ID)
	}
	if old.Revoked {
		nu.Revoked = true
		nu.RevokedAt = old.RevokedAt
	}
	nu.OutboxDropped = max(nu.OutboxDropped, old.OutboxDropped)
	if nu.Name != old.Name {
		if !nu.Revoked {
			if err := t.checkNameFree(nu.Name, nu.ID); err != nil {
				return err
			}
		}
		if t.agentIDByName(old.Name) == old.ID {
			if err := t.deleteAgentName(old.Name); err != nil {
				return err
			}
		}
		if holder := t.agentIDByName(nu.Name); holder == "" || !nu.Revoked {
			// A revoked agent renamed onto a name someone else holds does
			// not take the index entry from them.
			if err := t.putAgentName(nu.Name, nu.ID); err != nil {
				return err
			}
		}
	}
	return t.putAgent(nu)
}
