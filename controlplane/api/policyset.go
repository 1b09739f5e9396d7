package api

import (
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"tend.dev/tend/controlplane/fleet"
	"tend.dev/tend/controlplane/store"
	"tend.dev/tend/internal/policy"
	agentv1 "tend.dev/tend/proto/tend/agent/v1"
)

type loadedPolicy struct {
	p       *policy.Policy
	version uint64
}

// PolicySet is the control plane's in-memory view of the stored policies,
// used to compute each agent's check assignment.
type PolicySet struct {
	// Log receives why a policy's check was not given to an agent (a label
	// its tokens need is missing, or the substituted value is invalid).
	Log *slog.Logger
	// Held, if set, says a policy may not act now (breaker open, correlated
	// hold): it gets no standing orders. Set before use.
	Held       func(policy string) bool
	reload     sync.Mutex // one Reload at a time: a newer snapshot always wins
	mu         sync.RWMutex
	policies   []loadedPolicy          // sorted by name: assignments are stable
	byName     map[string]loadedPolicy // Lookup is on the path of every result
	generation uint64
}

// NewPolicySet loads the policies from the store. The assignment generation
// starts at the current time in nanoseconds so it only grows across
// restarts.
func NewPolicySet(st store.Store, log *slog.Logger) (*PolicySet, error) {
	ps := &PolicySet{Log: log, generation: uint64(time.Now().UnixNano())}
	if err := ps.Reload(st); err != nil {
		return nil, err
	}
	return ps, nil
}

// Reload re-reads every policy from the store.
func (ps *PolicySet) Reload(st store.Store) error {
	ps.reload.Lock()
	defer ps.reload.Unlock()
	stored, err := st.ListPolicies()
	if err != nil {
		return fmt.Errorf("load policies: %w", err)
	}
	loaded := make([]loadedPolicy, 0, len(stored))
	for _, sp := range stored {
		p, err := policy.FromSpecJSON(sp.Name, sp.Version, sp.Spec)
		if err != nil {
			return fmt.Errorf("stored policy %s v%d: %w", sp.Name, sp.Version, err)
		}
		loaded = append(loaded, loadedPolicy{p: p, version: sp.Version})
	}
	sort.Slice(loaded, func(i, j int) bool { return loaded[i].p.Name() < loaded[j].p.Name() })
	byName := make(map[string]loadedPolicy, len(loaded))
	for _, lp := range loaded {
		byName[lp.p.Name()] = lp
	}
	ps.mu.Lock()
	ps.policies = loaded
	ps.byName = byName
	ps.generation++
	ps.mu.Unlock()
	return nil
}

// Assignment is the complete set of policy checks for an agent's labels.
func (ps *PolicySet) Assignment(labels map[string]string) *agentv1.CheckAssignment {
	ps.mu.RLock()
	defer ps.mu.RUnlock()
	a := &agentv1.CheckAssignment{Generation: ps.generation}
	for _, lp := range ps.policies {
		if !lp.p.Matches(labels) {
			continue
		}
		cs, err := lp.p.CheckSpecFor(lp.version, labels)
		if err != nil {
			if ps.Log != nil {
				ps.Log.Warn("check not assigned", "policy", lp.p.Name(), "labels", labels, "err", err)
			}
			continue
		}
		a.Checks = append(a.Checks, cs)
	}
	return a
}

// MatchedAgents lists the names of the agents a policy's selector matches.
func (ps *PolicySet) MatchedAgents(name string, agents []store.Agent) []string {
	ps.mu.RLock()
	defer ps.mu.RUnlock()
	lp, ok := ps.byName[name]
	if !ok {
		return nil
	}
	var out []string
	for _, a := range agents {
		if !a.Revoked && lp.p.Matches(a.Labels) {
			out = append(out, a.Name)
		}
	}
	return out
}

// PushAll sends every connected agent its current assignment.
func (ps *PolicySet) PushAll(f *fleet.Registry) {
	f.Connected(func(a store.Agent, s *fleet.Session) {
		s.TrySend(&agentv1.ConnectResponse{Msg: &agentv1.ConnectResponse_Checks{Checks: ps.Assignment(a.Labels)}})
	})
}

// Lookup returns the current version of a policy.
func (ps *PolicySet) Lookup(name string) (*policy.Policy, uint64, bool) {
	ps.mu.RLock()
	defer ps.mu.RUnlock()
	lp, ok := ps.byName[name]
	if !ok {
		return nil, 0, false
	}
	return lp.p, lp.version, true
}

// MatchedCount is how many non-revoked agents the policy's selector matches.
func (ps *PolicySet) MatchedCount(name string, agents []store.Agent) int {
	return len(ps.MatchedAgents(name, agents))
}
