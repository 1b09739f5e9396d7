package api

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"tend.dev/tend/controlplane/fleet"
	"tend.dev/tend/controlplane/store"
	"tend.dev/tend/internal/pki"
	"tend.dev/tend/internal/policy"
	"tend.dev/tend/internal/task"
	agentv1 "tend.dev/tend/proto/tend/agent/v1"
	taskv1 "tend.dev/tend/proto/tend/task/v1"
)

// Standing orders: for every autonomous policy (in enforce mode) that
// matches an agent, a signed tend.task.v1.StandingOrder for that agent
// only, with the params substituted for its labels, valid for the policy's
// offline.validFor. The agent replaces its set with every StandingOrders
// message, so a policy that stops matching, is deleted or stops being
// autonomous loses its order at the next push.

// OrderClockSkew backdates an order's not-before.
const OrderClockSkew = 5 * time.Minute

// StandingOrders builds the agent's standing orders, signed with key. A
// policy whose params do not substitute for the agent's labels gets no
// order (logged).
func (ps *PolicySet) StandingOrders(agentID string, labels map[string]string, key *pki.SigningKey, now time.Time) *agentv1.StandingOrders {
	ps.mu.RLock()
	held := ps.Held
	var pols []loadedPolicy
	for _, lp := range ps.policies {
		if held != nil && held(lp.p.Name()) {
			continue // breaker open or correlated hold: nobody acts, offline included
		}
		if lp.p.Spec.Autonomous && lp.p.Spec.Mode == policy.ModeEnforce && lp.p.Spec.Remediation != nil && lp.p.Matches(labels) {
			pols = append(pols, lp)
		}
	}
	ps.mu.RUnlock()
	out := &agentv1.StandingOrders{}
	for _, lp := range pols {
		env, err := standingOrder(lp, agentID, labels, key, now)
		if err != nil {
			if ps.Log != nil {
				ps.Log.Warn("standing order not issued", "policy", lp.p.Name(), "agent_id", agentID, "err", err)
			}
			continue
		}
		out.Envelopes = append(out.Envelopes, env)
	}
	return out
}

func standingOrder(lp loadedPolicy, agentID string, labels map[string]string, key *pki.SigningKey, now time.Time) ([]byte, error) {
	p := lp.p
	rem, off := p.Spec.Remediation, p.Spec.Offline
	if off == nil {
		off = &policy.Offline{After: policy.Duration(policy.DefaultOfflineAfter), MaxPerHour: policy.DefaultOfflineMaxPerHour, ValidFor: policy.Duration(policy.DefaultOfflineValidFor)}
	}
	values, err := rem.ParamsFor(labels)
	if err != nil {
		return nil, fmt.Errorf("remediation params: %w", err)
	}
	params, err := structpb.NewStruct(values)
	if err != nil {
		return nil, fmt.Errorf("remediation params: %w", err)
	}
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	o := &taskv1.StandingOrder{
		OrderId:       "ord-" + hex.EncodeToString(b),
		AgentId:       agentID,
		Policy:        p.Name(),
		PolicyVersion: lp.version,
		CheckId:       p.Name(),
		Failures:      uint32(p.Spec.Trigger.Failures),
		Window:        uint32(p.Spec.Trigger.Window),
		When:          p.Spec.Trigger.When,
		Action:        rem.Action,
		Params:        params,
		Timeout:       durationpb.New(rem.Timeout.D()),
		OfflineAfter:  durationpb.New(off.After.D()),
		MaxPerHour:    uint32(off.MaxPerHour),
		VerifyWithin:  durationpb.New(rem.Verify.Within.D()),
		Backoff:       durationpb.New(rem.Backoff.D()),
		MaxAttempts:   uint32(max(1, rem.MaxAttempts)),
		NotBefore:     timestamppb.New(now.Add(-OrderClockSkew)),
		ExpiresAt:     timestamppb.New(now.Add(off.ValidFor.D())),
	}
	return task.SealStandingOrder(key, o)
}

// OrdersRefresh is how often standing orders are re-signed for connected
// agents: a third of the shortest validity of an autonomous policy, at
// least 10 s; an hour when there is none.
func (ps *PolicySet) OrdersRefresh() time.Duration {
	ps.mu.RLock()
	defer ps.mu.RUnlock()
	every := time.Hour
	for _, lp := range ps.policies {
		if o := lp.p.Spec.Offline; lp.p.Spec.Autonomous && o != nil {
			every = min(every, max(10*time.Second, o.ValidFor.D()/3))
		}
	}
	return every
}

// HasAutonomous reports whether any policy is autonomous.
func (ps *PolicySet) HasAutonomous() bool {
	ps.mu.RLock()
	defer ps.mu.RUnlock()
	for _, lp := range ps.policies {
		if lp.p.Spec.Autonomous {
			return true
		}
	}
	return false
}

// PushOrders sends every connected agent its standing orders.
func (ps *PolicySet) PushOrders(f *fleet.Registry, key func() *pki.SigningKey, now time.Time) {
	f.Connected(func(a store.Agent, s *fleet.Session) {
		s.TrySend(&agentv1.ConnectResponse{Msg: &agentv1.ConnectResponse_StandingOrders{StandingOrders: ps.StandingOrders(a.ID, a.Labels, key(), now)}})
	})
}
