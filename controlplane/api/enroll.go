package api

import (
	"context"
	"crypto/rand"
	"encoding/base32"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"tend.dev/tend/controlplane/fleet"
	"tend.dev/tend/controlplane/store"
	"tend.dev/tend/internal/pki"
	agentv1 "tend.dev/tend/proto/tend/agent/v1"
)

// Enrollment implements tend.agent.v1.EnrollmentService.
type Enrollment struct {
	agentv1.UnsafeEnrollmentServiceServer

	Store        store.Store
	Fleet        *fleet.Registry
	CA           *pki.CA
	SigningKeys  func() []*agentv1.SigningKey
	AgentCertTTL time.Duration
	Log          *slog.Logger
	Now          func() time.Time
}

var (
	agentNameRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)
	labelKeyRe  = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9_./-]{0,62})$`)
)

// ValidateLabels checks label keys and values (shared with the stream).
func ValidateLabels(labels map[string]string) error {
	if len(labels) > 64 {
		return fmt.Errorf("too many labels: %d (max 64)", len(labels))
	}
	for k, v := range labels {
		if !labelKeyRe.MatchString(k) {
			return fmt.Errorf("label key %q: want 1-63 characters [A-Za-z0-9_./-] starting with a letter or digit", k)
		}
		if len(v) > 253 || strings.ContainsAny(v, "\x00\n\r") {
			return fmt.Errorf("label %s: value too long or has control characters", k)
		}
	}
	return nil
}

func newAgentID() (string, error) {
	b := make([]byte, 10)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return "agt-" + strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b)), nil
}

// Enroll checks the join token and issues the agent's first certificate.
func (e *Enrollment) Enroll(ctx context.Context, req *agentv1.EnrollRequest) (*agentv1.EnrollResponse, error) {
	tokenID, secret, err := pki.SplitIDSecret(req.GetToken())
	if err != nil {
		return nil, status.Error(codes.Unauthenticated, err.Error())
	}
	if !agentNameRe.MatchString(req.GetName()) {
		return nil, status.Errorf(codes.InvalidArgument, "agent name %q: want 1-63 characters [A-Za-z0-9._-] starting with a letter or digit", req.GetName())
	}
	if strings.HasPrefix(req.GetName(), "agt-") {
		return nil, status.Errorf(codes.InvalidArgument, "agent name %q: names may not start with \"agt-\", which marks agent ids", req.GetName())
	}
	if len(req.GetVersion()) > 64 {
		return nil, status.Error(codes.InvalidArgument, "version: longer than 64 characters")
	}
	if err := ValidateLabels(req.GetLabels()); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	id, err := newAgentID()
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	// Check the CSR cheaply first, consume the token, and only then make the
	// CA sign: an unauthenticated caller never gets a signature.
	if err := pki.CheckCSR(req.GetCsrDer()); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "certificate request: %v", err)
	}
	now := e.Now()
	a := store.Agent{
		ID:            id,
		Name:          req.GetName(),
		Labels:        req.GetLabels(),
		Version:       req.GetVersion(),
		EnrolledAt:    now,
		LastSeen:      now,
		Status:        store.StatusDisconnected,
		CertExpiresAt: now.Add(e.AgentCertTTL),
	}
	err = e.Store.EnrollAgent(tokenID, pki.HashSecret(secret), now, a)
	if errors.Is(err, store.ErrNameTaken) {
		// The holder of the name can never connect again once its
		// certificate has expired: a host that was off that long enrolls
		// again with a new token and takes its name back.
		if old, ok := e.Fleet.Lookup(req.GetName()); ok && !old.Revoked && !old.CertExpiresAt.IsZero() && now.After(old.CertExpiresAt) {
			if _, rerr := e.Fleet.Revoke(old.ID, now); rerr == nil {
				e.Log.Warn("agent name taken over: the previous holder's certificate expired", "agent", req.GetName(), "old_agent_id", old.ID, "expired", old.CertExpiresAt)
				err = e.Store.EnrollAgent(tokenID, pki.HashSecret(secret), now, a)
			}
		}
	}
	if err != nil {
		e.Log.Warn("enrollment refused", "token_id", tokenID, "agent", req.GetName(), "err", err)
		switch {
		case errors.Is(err, store.ErrTokenUnknown):
			return nil, status.Error(codes.Unauthenticated, "join token refused: unknown token (create one with 'tendctl token create')")
		case errors.Is(err, store.ErrTokenExpired):
			return nil, status.Error(codes.Unauthenticated, "join token refused: expired (create a new one with 'tendctl token create')")
		case errors.Is(err, store.ErrTokenUsedUp):
			return nil, status.Error(codes.Unauthenticated, "join token refused: already used (tokens allow a set number of enrollments; create a new one with 'tendctl token create --uses N')")
		case errors.Is(err, store.ErrNameTaken):
			return nil, status.Errorf(codes.AlreadyExists, "agent name %q is already enrolled: restart that agent with its existing data dir, or remove it with 'tendctl delete agent %s', or choose another --name", req.GetName(), req.GetName())
		}
		return nil, toStatus(err)
	}
	certDER, err := e.CA.SignCSR(req.GetCsrDer(), id, pki.RoleAgent, e.AgentCertTTL)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "sign certificate: %v", err)
	}
	e.Fleet.Add(a)
	e.Log.Info("agent enrolled", "agent_id", id, "agent", a.Name, "token_id", tokenID)
	return &agentv1.EnrollResponse{
		AgentId:        id,
		CertificateDer: certDER,
		CaBundlePem:    e.CA.CertPEM,
		SigningKeys:    e.SigningKeys(),
	}, nil
}

// Renew issues a fresh certificate for the calling agent.
func (e *Enrollment) Renew(ctx context.Context, req *agentv1.RenewRequest) (*agentv1.RenewResponse, error) {
	id, ok := IdentityFrom(ctx)
	if !ok || id.Role != pki.RoleAgent {
		return nil, status.Error(codes.Unauthenticated, "renew needs the agent's client certificate")
	}
	if err := e.Fleet.Allowed(id.ID); err != nil {
		return nil, status.Error(codes.PermissionDenied, err.Error())
	}
	certDER, err := e.CA.SignCSR(req.GetCsrDer(), id.ID, pki.RoleAgent, e.AgentCertTTL)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "certificate request: %v", err)
	}
	e.Fleet.SetCertExpiry(id.ID, e.Now().Add(e.AgentCertTTL))
	e.Log.Info("agent certificate renewed", "agent_id", id.ID)
	return &agentv1.RenewResponse{CertificateDer: certDER, CaBundlePem: e.CA.CertPEM, SigningKeys: e.SigningKeys()}, nil
}
