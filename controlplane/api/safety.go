package api

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"tend.dev/tend/controlplane/keys"
	"tend.dev/tend/controlplane/remediation"
	"tend.dev/tend/controlplane/store"
	"tend.dev/tend/internal/pki"
	adminv1 "tend.dev/tend/proto/tend/admin/v1"
	agentv1 "tend.dev/tend/proto/tend/agent/v1"
)

// RemediationAdmin is what the admin API asks of the remediation loop.
type RemediationAdmin interface {
	Approve(ctx context.Context, taskID, by, comment string) (store.Task, error)
	Rearm(ctx context.Context, policy, by, comment string) (remediation.PolicyStatus, error)
	Status(ctx context.Context, policy string, limit int) (remediation.PolicyStatus, error)
}

// KeyInFlight is how long a task signed with a key may still reach an
// agent after the key stopped signing: the task lifetime (60 s) plus the
// agents' clock-skew allowance and margin (45 s).
const KeyInFlight = 105 * time.Second

// Limits on credentials.
const (
	DefaultCredentialTTL = 30 * 24 * time.Hour
	MaxCredentialTTL     = 365 * 24 * time.Hour
	maxComment           = 1024
	// shadowHistory is how many would-have-acted decisions GetPolicy shows.
	shadowHistory = 50
)

var credentialNameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9._@-]{0,61}[a-z0-9])?$`)

// caller names who made a call, for timelines and logs.
func caller(ctx context.Context) string {
	if id, ok := IdentityFrom(ctx); ok {
		return id.ID + " (" + id.Role + ")"
	}
	return "unknown"
}

func checkComment(c string) error {
	if len(c) > maxComment {
		return status.Errorf(codes.InvalidArgument, "comment: at most %d bytes, got %d", maxComment, len(c))
	}
	if strings.ContainsAny(c, "\x00\r\n") {
		return status.Error(codes.InvalidArgument, "comment: one line without control characters")
	}
	return nil
}

// ApproveTask approves a task that waits for approval.
func (h *Admin) ApproveTask(ctx context.Context, req *adminv1.ApproveTaskRequest) (*adminv1.ApproveTaskResponse, error) {
	if req.GetId() == "" {
		return nil, status.Error(codes.InvalidArgument, "id: the task to approve is required (see tendctl get tasks)")
	}
	if err := checkComment(req.GetComment()); err != nil {
		return nil, err
	}
	if h.Remediation == nil {
		return nil, status.Error(codes.Unavailable, "remediation is not running")
	}
	t, err := h.Remediation.Approve(ctx, req.GetId(), caller(ctx), req.GetComment())
	if err != nil {
		return nil, toStatus(err)
	}
	h.Log.Info("task approved", "task", t.ID, "by", caller(ctx))
	return &adminv1.ApproveTaskResponse{Task: h.taskProto(t)}, nil
}

// RearmPolicy closes a policy's breaker and ends its correlated hold.
func (h *Admin) RearmPolicy(ctx context.Context, req *adminv1.RearmPolicyRequest) (*adminv1.RearmPolicyResponse, error) {
	if req.GetName() == "" {
		return nil, status.Error(codes.InvalidArgument, "name: the policy to re-arm is required")
	}
	if err := checkComment(req.GetComment()); err != nil {
		return nil, err
	}
	if h.Remediation == nil {
		return nil, status.Error(codes.Unavailable, "remediation is not running")
	}
	st, err := h.Remediation.Rearm(ctx, req.GetName(), caller(ctx), req.GetComment())
	if err != nil {
		return nil, toStatus(err)
	}
	return &adminv1.RearmPolicyResponse{Status: h.policyStatusProto(st)}, nil
}

func (h *Admin) policyStatusProto(st remediation.PolicyStatus) *adminv1.PolicyStatus {
	out := &adminv1.PolicyStatus{
		BreakerOpen:      st.BreakerOpen,
		BreakerReason:    st.BreakerReason,
		BreakerOpenedAt:  tsOrNil(st.BreakerOpenedAt),
		BreakerFailures:  uint32(st.BreakerFailures),
		Correlated:       st.Correlated,
		CorrelatedReason: st.CorrelatedReason,
		FleetIncident:    st.FleetIncident,
		Running:          uint32(st.Running),
		StartedLastHour:  uint32(st.StartedLastHour),
	}
	for _, d := range st.WouldHaveActed {
		out.WouldHaveActed = append(out.WouldHaveActed, &adminv1.ShadowDecision{
			At: timestamppb.New(d.At), Incident: d.Incident, Agent: h.agentName(d.AgentID),
			Action: d.Action, ParamsJson: d.Params, Reason: d.Reason,
		})
	}
	return out
}

// Credentials keeps the revocation list of admin API credentials in memory
// (read on every call) and in the store.
type Credentials struct {
	Store store.Store

	mu      sync.RWMutex
	revoked map[string]bool // serial → revoked
}

// NewCredentials loads the revoked credentials.
func NewCredentials(st store.Store) (*Credentials, error) {
	c := &Credentials{Store: st, revoked: map[string]bool{}}
	all, err := st.ListCredentials()
	if err != nil {
		return nil, fmt.Errorf("load credentials: %w", err)
	}
	for _, cr := range all {
		if cr.Revoked {
			c.revoked[cr.Serial] = true
		}
	}
	return c, nil
}

// Allowed refuses a revoked credential.
func (c *Credentials) Allowed(id pki.Identity) error {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.revoked[id.Serial] {
		return fmt.Errorf("credential %s (serial %s) was revoked", id.ID, id.Serial)
	}
	return nil
}

func (c *Credentials) markRevoked(serial string) {
	c.mu.Lock()
	c.revoked[serial] = true
	c.mu.Unlock()
}

func credentialProto(c store.Credential) *adminv1.Credential {
	return &adminv1.Credential{
		Name: c.Name, Role: c.Role, Serial: c.Serial, IssuedAt: timestamppb.New(c.IssuedAt),
		ExpiresAt: timestamppb.New(c.ExpiresAt), IssuedBy: c.IssuedBy, Revoked: c.Revoked,
	}
}

// IssueCredential signs a client certificate for a person or tool.
func (h *Admin) IssueCredential(ctx context.Context, req *adminv1.IssueCredentialRequest) (*adminv1.IssueCredentialResponse, error) {
	name, role := req.GetName(), req.GetRole()
	if !credentialNameRE.MatchString(name) {
		return nil, status.Errorf(codes.InvalidArgument, "name: want 1 to 63 lowercase letters, digits and . _ @ -, got %q", name)
	}
	if !slices.Contains(pki.OperatorRoles, role) {
		return nil, status.Errorf(codes.InvalidArgument, "role: want one of %s, got %q", strings.Join(pki.OperatorRoles, ", "), role)
	}
	ttl := DefaultCredentialTTL
	if req.GetTtl() != nil {
		ttl = req.GetTtl().AsDuration()
	}
	if ttl <= 0 || ttl > MaxCredentialTTL {
		return nil, status.Errorf(codes.InvalidArgument, "ttl: must be greater than 0 and at most %s, got %s", MaxCredentialTTL, ttl)
	}
	der, err := h.CA.SignCSR(req.GetCsrDer(), name, role, ttl)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "csr_der: %v", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, toStatus(err)
	}
	c := store.Credential{
		Name: name, Role: role, Serial: cert.SerialNumber.Text(16), IssuedAt: h.Now(),
		ExpiresAt: cert.NotAfter, IssuedBy: caller(ctx),
	}
	if err := h.Store.PutCredential(c); err != nil {
		return nil, toStatus(err)
	}
	h.Log.Info("credential issued", "name", name, "role", role, "serial", c.Serial, "expires", c.ExpiresAt, "by", c.IssuedBy)
	return &adminv1.IssueCredentialResponse{Credential: credentialProto(c), CertificatePem: pki.EncodeCertPEM(der), CaPem: h.CA.CertPEM}, nil
}

// ListCredentials returns every issued credential.
func (h *Admin) ListCredentials(ctx context.Context, _ *adminv1.ListCredentialsRequest) (*adminv1.ListCredentialsResponse, error) {
	all, err := h.Store.ListCredentials()
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &adminv1.ListCredentialsResponse{}
	for _, c := range all {
		resp.Credentials = append(resp.Credentials, credentialProto(c))
	}
	return resp, nil
}

// RevokeCredential revokes every credential with that name, or the one
// with that serial.
func (h *Admin) RevokeCredential(ctx context.Context, req *adminv1.RevokeCredentialRequest) (*adminv1.RevokeCredentialResponse, error) {
	if req.GetName() == "" {
		return nil, status.Error(codes.InvalidArgument, "name: a credential name or serial is required")
	}
	all, err := h.Store.ListCredentials()
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &adminv1.RevokeCredentialResponse{}
	self, _ := IdentityFrom(ctx)
	for _, c := range all {
		if c.Name != req.GetName() && c.Serial != req.GetName() {
			continue
		}
		if c.Serial == self.Serial {
			return nil, status.Errorf(codes.FailedPrecondition, "credential %s (serial %s) is the one making this call: revoke it with another admin credential", c.Name, c.Serial)
		}
		if !c.Revoked {
			c.Revoked, c.RevokedAt = true, h.Now()
			if err := h.Store.PutCredential(c); err != nil {
				return nil, toStatus(err)
			}
		}
		h.Credentials.markRevoked(c.Serial)
		h.Log.Info("credential revoked", "name", c.Name, "serial", c.Serial, "by", caller(ctx))
		resp.Revoked = append(resp.Revoked, credentialProto(c))
	}
	if len(resp.Revoked) == 0 {
		return nil, status.Errorf(codes.NotFound, "no credential named or with serial %q (see tendctl get credentials)", req.GetName())
	}
	return resp, nil
}

// keyInfo counts, among the connected agents, those holding the key. An
// agent that is not connected needs no count: it is sent the key set right
// after Welcome, before any task, when it connects (and in every renewal).
func (h *Admin) keyInfo(k keys.Info) *adminv1.SigningKeyInfo {
	var ids []string
	for _, a := range h.Fleet.List() {
		if !a.Revoked && a.Status == store.StatusConnected {
			ids = append(ids, a.ID)
		}
	}
	return &adminv1.SigningKeyInfo{
		KeyId: k.ID, State: k.State, CreatedAt: timestamppb.New(k.CreatedAt),
		AgentsHolding: uint32(h.Keys.Holders(k.ID, ids)), AgentsTotal: uint32(len(ids)),
	}
}

func keyStatus(err error) error {
	switch {
	case errors.Is(err, keys.ErrNotFound):
		return status.Error(codes.NotFound, err.Error())
	case errors.Is(err, keys.ErrState):
		return status.Error(codes.FailedPrecondition, err.Error())
	}
	return toStatus(err)
}

// ListSigningKeys returns the task-signing keys.
func (h *Admin) ListSigningKeys(ctx context.Context, _ *adminv1.ListSigningKeysRequest) (*adminv1.ListSigningKeysResponse, error) {
	resp := &adminv1.ListSigningKeysResponse{}
	for _, k := range h.Keys.List() {
		resp.Keys = append(resp.Keys, h.keyInfo(k))
	}
	return resp, nil
}

// RotateSigningKey creates and publishes a new key.
func (h *Admin) RotateSigningKey(ctx context.Context, _ *adminv1.RotateSigningKeyRequest) (*adminv1.RotateSigningKeyResponse, error) {
	k, err := h.Keys.Rotate()
	if err != nil {
		return nil, keyStatus(err)
	}
	h.Log.Info("signing key created and published", "key_id", k.ID, "by", caller(ctx))
	return &adminv1.RotateSigningKeyResponse{Key: h.keyInfo(k)}, nil
}

// ActivateSigningKey makes a published key the signing key.
func (h *Admin) ActivateSigningKey(ctx context.Context, req *adminv1.ActivateSigningKeyRequest) (*adminv1.ActivateSigningKeyResponse, error) {
	if req.GetKeyId() == "" {
		return nil, status.Error(codes.InvalidArgument, "key_id: required (see tendctl get keys)")
	}
	info := h.keyInfo(keys.Info{ID: req.GetKeyId()})
	k, err := h.Keys.Activate(req.GetKeyId(), int(info.AgentsTotal-info.AgentsHolding), req.GetForce())
	if err != nil {
		return nil, keyStatus(err)
	}
	h.Log.Info("signing key activated", "key_id", k.ID, "force", req.GetForce(), "by", caller(ctx))
	return &adminv1.ActivateSigningKeyResponse{Key: h.keyInfo(k)}, nil
}

// RetireSigningKey stops publishing a key.
func (h *Admin) RetireSigningKey(ctx context.Context, req *adminv1.RetireSigningKeyRequest) (*adminv1.RetireSigningKeyResponse, error) {
	if req.GetKeyId() == "" {
		return nil, status.Error(codes.InvalidArgument, "key_id: required (see tendctl get keys)")
	}
	k, err := h.Keys.Retire(req.GetKeyId(), KeyInFlight, req.GetForce())
	if err != nil {
		return nil, keyStatus(err)
	}
	h.Log.Info("signing key retired", "key_id", k.ID, "by", caller(ctx))
	return &adminv1.RetireSigningKeyResponse{Key: h.keyInfo(k)}, nil
}

// SigningKeySet is the message that tells an agent which keys to accept.
func SigningKeySet(r *keys.Ring) *agentv1.ConnectResponse {
	return &agentv1.ConnectResponse{Msg: &agentv1.ConnectResponse_SigningKeys{SigningKeys: &agentv1.SigningKeySet{Keys: r.Published()}}}
}
