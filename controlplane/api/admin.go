package api

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"tend.dev/tend/controlplane/fleet"
	"tend.dev/tend/controlplane/keys"
	"tend.dev/tend/controlplane/store"
	"tend.dev/tend/internal/pki"
	"tend.dev/tend/internal/policy"
	adminv1 "tend.dev/tend/proto/tend/admin/v1"
)

// Admin implements tend.admin.v1.AdminService.
type Admin struct {
	adminv1.UnsafeAdminServiceServer

	Store    store.Store
	Fleet    *fleet.Registry
	Policies *PolicySet
	CA       *pki.CA
	Log      *slog.Logger
	Now      func() time.Time
	// OnPolicyChange is told every policy applied or deleted.
	OnPolicyChange func(name string)
	// Remediation answers approvals, re-arms and policy status (nil: those
	// calls are Unavailable).
	Remediation RemediationAdmin
	// Keys is the task-signing key ring; Credentials the revocation list.
	Keys        *keys.Ring
	Credentials *Credentials
}

// Limits on admin input.
const (
	MaxPolicyFile   = 1 << 20
	DefaultTokenTTL = time.Hour
	MaxTokenTTL     = 30 * 24 * time.Hour
	MaxTokenUses    = 100000
)

func agentStatus(s string) adminv1.AgentStatus {
	switch s {
	case store.StatusConnected:
		return adminv1.AgentStatus_AGENT_STATUS_CONNECTED
	case store.StatusDisconnected:
		return adminv1.AgentStatus_AGENT_STATUS_DISCONNECTED
	case store.StatusDown:
		return adminv1.AgentStatus_AGENT_STATUS_DOWN
	}
	return adminv1.AgentStatus_AGENT_STATUS_UNSPECIFIED
}

func (h *Admin) agentProto(a store.Agent) *adminv1.Agent {
	out := &adminv1.Agent{
		Name:               a.Name,
		Id:                 a.ID,
		Labels:             a.Labels,
		Status:             agentStatus(a.Status),
		LastSeen:           timestamppb.New(a.LastSeen),
		Version:            a.Version,
		Facts:              a.Facts,
		EnrolledAt:         timestamppb.New(a.EnrolledAt),
		Revoked:            a.Revoked,
		OutboxDroppedTotal: a.OutboxDropped,
	}
	if c, err := h.Store.Counters(a.ID); err == nil {
		out.ResultsStored = c.ResultsStored
	}
	return out
}

// ListAgents returns the agents; revoked ones only when asked.
func (h *Admin) ListAgents(ctx context.Context, req *adminv1.ListAgentsRequest) (*adminv1.ListAgentsResponse, error) {
	resp := &adminv1.ListAgentsResponse{}
	for _, a := range h.Fleet.List() {
		if a.Revoked && !req.GetIncludeRevoked() {
			continue
		}
		resp.Agents = append(resp.Agents, h.agentProto(a))
	}
	return resp, nil
}

// DeleteAgent revokes an agent.
func (h *Admin) DeleteAgent(ctx context.Context, req *adminv1.DeleteAgentRequest) (*adminv1.DeleteAgentResponse, error) {
	if req.GetName() == "" {
		return nil, status.Error(codes.InvalidArgument, "name: required (agent name or id)")
	}
	a, err := h.Fleet.Revoke(req.GetName(), h.Now())
	if err != nil {
		return nil, toStatus(err)
	}
	h.Log.Warn("agent revoked", "agent_id", a.ID, "agent", a.Name)
	return &adminv1.DeleteAgentResponse{Agent: h.agentProto(a)}, nil
}

// ApplyPolicies validates a whole file and stores all of it or none of it.
func (h *Admin) ApplyPolicies(ctx context.Context, req *adminv1.ApplyPoliciesRequest) (*adminv1.ApplyPoliciesResponse, error) {
	if len(req.GetContent()) > MaxPolicyFile {
		return nil, status.Errorf(codes.InvalidArgument, "%s: file of %d bytes, max %d", req.GetFilename(), len(req.GetContent()), MaxPolicyFile)
	}
	name := req.GetFilename()
	if name == "" {
		name = "<request>"
	}
	ps, err := policy.Parse(name, req.GetContent())
	if err != nil {
		return nil, toStatus(err)
	}
	if len(ps) == 0 {
		return nil, status.Errorf(codes.InvalidArgument, "%s: no policy documents found", name)
	}
	stored := make([]store.Policy, 0, len(ps))
	for _, p := range ps {
		spec, err := p.SpecJSON()
		if err != nil {
			return nil, status.Errorf(codes.Internal, "policy %s: encode spec: %v", p.Name(), err)
		}
		stored = append(stored, store.Policy{Name: p.Name(), Spec: spec})
	}
	resp := &adminv1.ApplyPoliciesResponse{}
	if req.GetDryRun() {
		for _, p := range stored {
			resp.Changes = append(resp.Changes, &adminv1.PolicyChange{Name: p.Name, Action: "validated (dry run)"})
		}
		return resp, nil
	}
	changes, err := h.Store.ApplyPolicies(stored, h.Now())
	if err != nil {
		return nil, toStatus(err)
	}
	if err := h.Policies.Reload(h.Store); err != nil {
		return nil, toStatus(err)
	}
	h.Policies.PushAll(h.Fleet)
	if h.Keys != nil {
		h.Policies.PushOrders(h.Fleet, h.Keys.Active, h.Now())
	}
	for _, c := range changes {
		h.Log.Info("policy applied", "policy", c.Name, "version", c.Version, "action", c.Action)
		if h.OnPolicyChange != nil && c.Action != "unchanged" {
			h.OnPolicyChange(c.Name)
		}
		resp.Changes = append(resp.Changes, &adminv1.PolicyChange{Name: c.Name, Version: c.Version, Action: c.Action})
	}
	return resp, nil
}

func policyProto(p store.Policy) *adminv1.Policy {
	return &adminv1.Policy{Name: p.Name, Version: p.Version, SpecJson: p.Spec, UpdatedAt: timestamppb.New(p.UpdatedAt)}
}

// ListPolicies returns every stored policy.
func (h *Admin) ListPolicies(ctx context.Context, _ *adminv1.ListPoliciesRequest) (*adminv1.ListPoliciesResponse, error) {
	ps, err := h.Store.ListPolicies()
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &adminv1.ListPoliciesResponse{}
	for _, p := range ps {
		resp.Policies = append(resp.Policies, policyProto(p))
	}
	return resp, nil
}

// GetPolicy returns one policy and the agents it matches now.
func (h *Admin) GetPolicy(ctx context.Context, req *adminv1.GetPolicyRequest) (*adminv1.GetPolicyResponse, error) {
	p, err := h.Store.GetPolicy(req.GetName())
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &adminv1.GetPolicyResponse{Policy: policyProto(p), MatchedAgents: h.Policies.MatchedAgents(p.Name, h.Fleet.List())}
	if h.Remediation != nil {
		st, err := h.Remediation.Status(ctx, p.Name, shadowHistory)
		if err != nil {
			return nil, toStatus(err)
		}
		resp.Status = h.policyStatusProto(st)
	}
	return resp, nil
}

// DeletePolicy removes a policy; agents stop running its check.
func (h *Admin) DeletePolicy(ctx context.Context, req *adminv1.DeletePolicyRequest) (*adminv1.DeletePolicyResponse, error) {
	if err := h.Store.DeletePolicy(req.GetName()); err != nil {
		return nil, toStatus(err)
	}
	if err := h.Policies.Reload(h.Store); err != nil {
		return nil, toStatus(err)
	}
	h.Policies.PushAll(h.Fleet)
	if h.Keys != nil {
		h.Policies.PushOrders(h.Fleet, h.Keys.Active, h.Now())
	}
	if h.OnPolicyChange != nil {
		h.OnPolicyChange(req.GetName())
	}
	h.Log.Info("policy deleted", "policy", req.GetName())
	return &adminv1.DeletePolicyResponse{}, nil
}

func (h *Admin) resolveAgent(nameOrID string) (store.Agent, error) {
	a, ok := h.Fleet.Lookup(nameOrID)
	if !ok {
		return store.Agent{}, fmt.Errorf("agent %q: %w", nameOrID, store.ErrNotFound)
	}
	return a, nil
}

// ListChecks returns the latest state of every (agent, check).
func (h *Admin) ListChecks(ctx context.Context, req *adminv1.ListChecksRequest) (*adminv1.ListChecksResponse, error) {
	agentID := ""
	if req.GetAgent() != "" {
		a, err := h.resolveAgent(req.GetAgent())
		if err != nil {
			return nil, toStatus(err)
		}
		agentID = a.ID
	}
	states, err := h.Store.ListCheckStates(agentID)
	if err != nil {
		return nil, toStatus(err)
	}
	names := map[string]string{}
	for _, a := range h.Fleet.List() {
		names[a.ID] = a.Name
	}
	resp := &adminv1.ListChecksResponse{}
	for _, s := range states {
		resp.Checks = append(resp.Checks, &adminv1.CheckState{
			AgentId:    s.AgentID,
			AgentName:  names[s.AgentID],
			CheckId:    s.CheckID,
			Last:       s.Last,
			Since:      timestamppb.New(s.Since),
			Streak:     s.Streak,
			HistoryLen: s.HistoryLen,
		})
	}
	return resp, nil
}

// ListResults returns the stored history of one check.
func (h *Admin) ListResults(ctx context.Context, req *adminv1.ListResultsRequest) (*adminv1.ListResultsResponse, error) {
	a, err := h.resolveAgent(req.GetAgent())
	if err != nil {
		return nil, toStatus(err)
	}
	rs, err := h.Store.ListResults(a.ID, req.GetCheckId(), int(req.GetLimit()))
	if err != nil {
		return nil, toStatus(err)
	}
	return &adminv1.ListResultsResponse{Results: rs}, nil
}

// CreateToken makes a join token; only its secret's hash is stored.
func (h *Admin) CreateToken(ctx context.Context, req *adminv1.CreateTokenRequest) (*adminv1.CreateTokenResponse, error) {
	ttl := DefaultTokenTTL
	if req.GetTtl() != nil {
		ttl = req.GetTtl().AsDuration()
	}
	if ttl <= 0 || ttl > MaxTokenTTL {
		return nil, status.Errorf(codes.InvalidArgument, "ttl: %s is out of range (want > 0 and <= %s)", ttl, MaxTokenTTL)
	}
	uses := req.GetUses()
	if uses == 0 {
		uses = 1
	}
	if uses > MaxTokenUses {
		return nil, status.Errorf(codes.InvalidArgument, "uses: %d is too many (max %d)", uses, MaxTokenUses)
	}
	id, secret, err := pki.NewJoinToken()
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	now := h.Now()
	t := store.Token{ID: id, SecretHash: pki.HashSecret(secret), CreatedAt: now, ExpiresAt: now.Add(ttl), Uses: uses, Description: req.GetDescription()}
	if err := h.Store.CreateToken(t); err != nil {
		return nil, toStatus(err)
	}
	h.Log.Info("join token created", "token_id", id, "expires_at", t.ExpiresAt, "uses", uses)
	return &adminv1.CreateTokenResponse{
		Token:     pki.FormatToken(id, secret, h.CA.Pin()),
		Id:        id,
		ExpiresAt: timestamppb.New(t.ExpiresAt),
		Uses:      uses,
		CaPin:     h.CA.Pin(),
	}, nil
}
